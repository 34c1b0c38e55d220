"""The subscriber data-key cache and the embedded PostgreSQL."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import asyncpg
import pytest

from ispcare_radius.privacy.crypto import DecryptError, wrap_key
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.store.embedded import start_embedded
from ispcare_radius.store.keyring import DataKeyCache


def test_cache_is_bounded_lru(master_keys: MasterKeys) -> None:
    """The cache keeps at most max_entries ciphers, evicting the least recently used."""
    cache = DataKeyCache(master_keys, max_entries=2)
    wrapped = {sid: cache.new_key(sid)[0] for sid in (1, 2)}
    assert cache.cached(1) is not None  # 1 is now the most recent
    cache.new_key(3)
    assert len(cache) == 2
    assert cache.cached(2) is None and cache.cached(1) is not None
    # An evicted key is unwrapped again from its stored blob.
    assert cache.cipher(2, wrapped[2]) is not None
    cache.discard(2)
    assert cache.cached(2) is None


def test_cipher_follows_the_stored_blob(master_keys: MasterKeys) -> None:
    """A cached key is not used when the stored wrapped key differs; purpose binds the id."""
    cache = DataKeyCache(master_keys)
    wrapped, cipher = cache.new_key(7)
    blob = cipher.seal(b"v", b"aad")
    replacement = wrap_key(master_keys, b"\x01" * 32, purpose="subscriber:7")
    with pytest.raises(DecryptError):
        cache.cipher(7, replacement).open(blob, b"aad")
    assert cache.cipher(7, wrapped).open(blob, b"aad") == b"v"
    with pytest.raises(DecryptError):
        DataKeyCache(master_keys).cipher(8, wrapped)  # wrapped for subscriber 7


@pytest.mark.embedded
async def test_embedded_server_restarts_with_its_data() -> None:
    """The embedded PostgreSQL starts, keeps data across stop/start, and works as root."""
    base = Path(tempfile.mkdtemp(prefix="ispcare-embedded-"))
    try:
        t0 = time.monotonic()
        server = start_embedded(base / "data")
        first = time.monotonic() - t0
        conn = await asyncpg.connect(server.dsn)
        await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        await conn.close()
        server.stop()
        t0 = time.monotonic()
        server = start_embedded(base / "data")
        again = time.monotonic() - t0
        conn = await asyncpg.connect(server.dsn)
        assert await conn.fetchval("SELECT v FROM kept") == 42
        await conn.close()
        server.stop()
        print(f"embedded first start {first:.2f}s, restart {again:.2f}s")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_embedded_refuses_a_foreign_directory(tmp_path: Path) -> None:
    """A non-empty directory that is not a PostgreSQL data dir is refused."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("x")
    with pytest.raises(RuntimeError, match="not a PostgreSQL data directory"):
        start_embedded(tmp_path / "data")
