"""aaa layer."""
