"""ServerSettings validation and Counters snapshots."""

from __future__ import annotations

import dataclasses

import pytest

from ispcare_radius.protocol.codes import Code, DropReason
from ispcare_radius.server.counters import Counters
from ispcare_radius.server.settings import ServerSettings


def test_defaults_listen_on_both_families_and_standard_ports() -> None:
    """The defaults bind 0.0.0.0 and :: on 1812 and 1813."""
    s = ServerSettings()
    assert s.auth_listen == (("0.0.0.0", 1812), ("::", 1812))
    assert s.acct_listen == (("0.0.0.0", 1813), ("::", 1813))
    assert s.reply_cache_ttl == 30.0 and s.max_in_flight == 10_000


def test_settings_are_frozen() -> None:
    """A settings value cannot be changed after construction."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        ServerSettings().max_in_flight = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("auth_listen", (("radius.example", 1812),), "not an IP address"),
        ("auth_listen", (("127.0.0.1", 70000),), "0..65535"),
        ("auth_listen", (("127.0.0.1", 1812), ("127.0.0.1", 1812)), "twice"),
        ("acct_listen", (("::1",),), "(address, port)"),
        ("reply_cache_ttl", 0.0, "reply_cache_ttl"),
        ("reply_cache_ttl", float("nan"), "finite"),
        ("shutdown_grace", -1.0, "shutdown_grace"),
        ("reply_cache_max", 0, "reply_cache_max"),
        ("max_in_flight", 0, "max_in_flight"),
        ("max_in_flight", 1.5, "max_in_flight"),
        ("recv_buffer_bytes", 100, "recv_buffer_bytes"),
    ],
)
def test_invalid_values_raise_one_line_value_error(field: str, value: object, words: str) -> None:
    """Each invalid field raises ValueError whose single-line message names the problem."""
    with pytest.raises(ValueError) as info:
        ServerSettings(**{field: value})  # type: ignore[arg-type]
    message = str(info.value)
    assert words in message and "\n" not in message


def test_nothing_to_listen_on_is_an_error() -> None:
    """Empty auth and acct listen lists are refused."""
    with pytest.raises(ValueError, match="nothing to serve"):
        ServerSettings(auth_listen=(), acct_listen=())


def test_zero_grace_and_port_zero_are_allowed() -> None:
    """shutdown_grace 0 and port 0 (kernel-chosen) are valid."""
    s = ServerSettings(auth_listen=(("127.0.0.1", 0),), acct_listen=(), shutdown_grace=0)
    assert s.shutdown_grace == 0


def test_counters_snapshot_names_reasons_codes_and_nas() -> None:
    """snapshot flattens drops, requests, replies and per-NAS counts under stable names."""
    c = Counters()
    c.drop(DropReason.UNKNOWN_CLIENT)
    c.drop(DropReason.BAD_AUTHENTICATOR, "nas-a")
    c.request(Code.ACCESS_REQUEST, "nas-a")
    c.reply(Code.ACCESS_ACCEPT, "nas-a")
    c.ma_missing_observed += 2
    snap = c.snapshot()
    assert snap["drops.unknown_client"] == 1
    assert snap["drops.bad_authenticator"] == 1
    assert snap["drops.overloaded"] == 0
    assert snap["requests.access_request"] == 1
    assert snap["replies.access_accept"] == 1
    assert snap["ma_missing_observed"] == 2
    assert snap["nas.nas-a.requests"] == 1
    assert snap["nas.nas-a.drops"] == 1
    assert c.get_drop(DropReason.UNKNOWN_CLIENT) == 1
    assert all(f"drops.{r.value}" in snap for r in DropReason)
