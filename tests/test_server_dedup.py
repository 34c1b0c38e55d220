"""ReplyCache with time passed in: new, in progress, answered, expiry, no-reply, bound."""

from __future__ import annotations

import pytest

from ispcare_radius.server.dedup import CacheKey, HitKind, ReplyCache


def key(n: int = 0, *, port: int = 40000, ip: str = "192.0.2.10") -> CacheKey:
    return CacheKey(ip, port, 1, n % 256, bytes([n % 256]) * 16)


def test_first_sight_is_new_then_in_progress() -> None:
    """A key is NEW once, then IN_PROGRESS until completed."""
    cache = ReplyCache(ttl=30.0)
    assert cache.begin(key(), now=0.0).kind is HitKind.NEW
    assert cache.begin(key(), now=1.0).kind is HitKind.IN_PROGRESS


def test_answered_key_returns_the_same_reply_bytes() -> None:
    """After complete, begin gives ANSWERED with the stored reply."""
    cache = ReplyCache(ttl=30.0)
    cache.begin(key(), now=0.0)
    cache.complete(key(), b"reply-bytes", now=1.0)
    hit = cache.begin(key(), now=2.0)
    assert hit.kind is HitKind.ANSWERED and hit.reply == b"reply-bytes"


def test_answered_entry_expires_ttl_after_completion() -> None:
    """The reply is served until complete-time + ttl, then the key is new again."""
    cache = ReplyCache(ttl=5.0)
    cache.begin(key(), now=100.0)
    cache.complete(key(), b"r", now=103.0)
    assert cache.begin(key(), now=107.9).kind is HitKind.ANSWERED
    assert cache.begin(key(), now=108.0).kind is HitKind.NEW


def test_purge_removes_expired_entries() -> None:
    """purge drops answered entries whose ttl has passed and keeps fresh ones."""
    cache = ReplyCache(ttl=5.0)
    for n in range(3):
        cache.begin(key(n), now=float(n))
        cache.complete(key(n), b"r", now=float(n))
    assert cache.purge(now=6.5) == 2
    assert len(cache) == 1
    assert cache.begin(key(2), now=6.5).kind is HitKind.ANSWERED


def test_no_reply_forgets_the_key_so_a_retry_is_processed() -> None:
    """complete(None) removes the entry: the next copy is NEW."""
    cache = ReplyCache()
    cache.begin(key(), now=0.0)
    cache.complete(key(), None, now=0.5)
    assert cache.begin(key(), now=1.0).kind is HitKind.NEW


def test_keys_differ_by_every_field() -> None:
    """Changing port, address, code, identifier or authenticator makes a new key."""
    cache = ReplyCache()
    base = CacheKey("192.0.2.1", 1, 1, 7, b"a" * 16)
    variants = [
        base,
        base._replace(source_ip="192.0.2.2"),
        base._replace(source_port=2),
        base._replace(code=4),
        base._replace(identifier=8),
        base._replace(authenticator=b"b" * 16),
    ]
    assert [cache.begin(k, now=0.0).kind for k in variants] == [HitKind.NEW] * 6


def test_bound_evicts_the_oldest_answered_entry() -> None:
    """At max_entries, a new answer evicts the oldest answered key, which becomes NEW."""
    cache = ReplyCache(ttl=30.0, max_entries=3)
    for n in range(4):
        cache.begin(key(n), now=float(n))
        cache.complete(key(n), bytes([n]), now=float(n))
    assert len(cache) == 3
    assert cache.evicted == 1
    assert cache.begin(key(1), now=4.0).reply == bytes([1])
    assert cache.begin(key(0), now=4.0).kind is HitKind.NEW


def test_completion_moves_entry_to_the_young_end() -> None:
    """An entry answered late is younger than ones answered earlier and survives eviction."""
    cache = ReplyCache(ttl=30.0, max_entries=2)
    cache.begin(key(0), now=0.0)
    cache.begin(key(1), now=0.0)
    cache.complete(key(1), b"one", now=0.1)
    cache.complete(key(0), b"zero", now=0.2)
    cache.begin(key(2), now=0.3)  # evicts key(1), the oldest by last change
    assert cache.begin(key(0), now=0.4).reply == b"zero"


def test_in_progress_keys_are_never_evicted() -> None:
    """However full the cache, a key being processed stays IN_PROGRESS: a
    retransmission must not run the handler twice."""
    cache = ReplyCache(max_entries=1)
    cache.begin(key(0), now=0.0)
    for n in range(1, 5):
        cache.begin(key(n), now=0.0)
        cache.complete(key(n), b"x", now=0.0)
    assert cache.begin(key(0), now=0.1).kind is HitKind.IN_PROGRESS
    cache.complete(key(0), b"late", now=1.0)
    assert cache.begin(key(0), now=1.0).reply == b"late"


def test_completing_a_forgotten_key_stores_nothing() -> None:
    """complete on a key forgotten meanwhile stores nothing."""
    cache = ReplyCache(max_entries=1)
    cache.begin(key(0), now=0.0)
    cache.forget(key(0))
    cache.complete(key(0), b"late", now=1.0)
    assert len(cache) == 0
    assert cache.begin(key(0), now=1.0).kind is HitKind.NEW


def test_forget_drops_an_in_progress_key() -> None:
    """forget makes the key NEW again (used when a request is discarded)."""
    cache = ReplyCache()
    cache.begin(key(), now=0.0)
    cache.forget(key())
    assert cache.begin(key(), now=0.0).kind is HitKind.NEW


def test_invalid_settings_are_rejected() -> None:
    """ttl <= 0 or max_entries < 1 raise ValueError."""
    with pytest.raises(ValueError):
        ReplyCache(ttl=0)
    with pytest.raises(ValueError):
        ReplyCache(max_entries=0)


def test_key_repr_hides_the_source_address() -> None:
    """The cache key's repr names code and identifier, never the address."""
    assert "192.0.2.10" not in repr(key())
