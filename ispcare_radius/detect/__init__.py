"""Suspicious-login detection: pure rules (``rules``), their settings, and the
bounded in-memory detector (``state``). No asyncio, asyncpg, sockets or
protocol; time is always passed in."""
