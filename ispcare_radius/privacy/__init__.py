"""Privacy layer: keys, field crypto, blind indexes, log redaction; no asyncio/asyncpg/socket."""
