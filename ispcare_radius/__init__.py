"""ispcare-radius: the RADIUS/AAA server of the ISPCare billing system."""
