"""Log redaction and logging configuration."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from ispcare_radius.privacy.blind import Pseudonymizer
from ispcare_radius.privacy.logsetup import configure_logging, get_logger
from ispcare_radius.privacy.redact import MASK, REDACTED, RedactPersonal
from ispcare_radius.privacy.secret import Secret

PSEUDO = Pseudonymizer(bytes(range(32)))
USER = "synthetic.alice@example.net"
PASSWORD = "Correct-Horse-77"
MAC = "0A-1B-2C-3D-4E-5F"
SHARED = "nas-shared-secret-xyz"
SECRET_OBJ = "value-inside-secret-object"
CLIENT_IP = "198.51.100.23"


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _redact(event: dict[str, Any], pseudo: Pseudonymizer | None = PSEUDO) -> dict[str, Any]:
    return dict(RedactPersonal(pseudo)(None, "info", dict(event)))


def test_logged_event_shows_pseudonyms_and_no_plaintext() -> None:
    """A JSON log line carries pseudonyms for identifiers and none of the plaintexts."""
    out = io.StringIO()
    configure_logging(pseudonymizer=PSEUDO, stream=out)
    get_logger("auth").info(
        "access_reject",
        user_name=USER,
        password=PASSWORD,
        mac=MAC,
        shared_secret=SHARED,
        nas=Secret(SECRET_OBJ),
        client_ip=CLIENT_IP,
        reason="bad_password",
    )
    text = out.getvalue()
    for plain in (USER, PASSWORD, MAC, SHARED, SECRET_OBJ, CLIENT_IP, "0a:1b:2c:3d:4e:5f"):
        assert plain not in text
    (line,) = _lines(out)
    assert line["user_name"] == PSEUDO(USER)
    assert line["mac"] == PSEUDO("0a:1b:2c:3d:4e:5f")
    assert line["client_ip"] == PSEUDO(CLIENT_IP)
    assert line["nas"] == MASK
    assert "password" not in line and "shared_secret" not in line
    assert line["reason"] == "bad_password"
    assert line["event"] == "access_reject"
    assert line["level"] == "info"
    assert line["logger"] == "auth"
    assert line["timestamp"].endswith("Z") and "T" in line["timestamp"]


def test_every_line_is_json() -> None:
    """With a non-terminal stream each log call writes one JSON object per line."""
    out = io.StringIO()
    configure_logging(pseudonymizer=PSEUDO, stream=out)
    log = get_logger("t")
    log.info("one", n=1)
    log.warning("two", data={"k": [1, 2]}, text='quote " and \n newline')
    log.error("three", user_name="ünïcödé")
    lines = _lines(out)
    assert [line["event"] for line in lines] == ["one", "two", "three"]
    assert lines[1]["data"] == {"k": [1, 2]}


def test_before_pseudonymizer_personal_values_are_redacted() -> None:
    """Configured without a pseudonymizer, personal values are written as <redacted>."""
    out = io.StringIO()
    configure_logging(pseudonymizer=None, stream=out)
    get_logger("boot").info("start", user_name=USER, mac=MAC, password=PASSWORD)
    (line,) = _lines(out)
    assert line["user_name"] == REDACTED and line["mac"] == REDACTED
    assert "password" not in line
    assert USER not in out.getvalue()


def test_get_logger_before_configuration_is_redacting() -> None:
    """get_logger with no configuration installs the redacting defaults."""
    assert not structlog.is_configured()
    get_logger("early")
    assert structlog.is_configured()
    processors = structlog.get_config()["processors"]
    assert any(isinstance(p, RedactPersonal) for p in processors)


def test_reconfiguring_reaches_loggers_created_earlier() -> None:
    """A logger taken before the keys are loaded uses the pseudonymizer given later."""
    out = io.StringIO()
    configure_logging(pseudonymizer=None, stream=out)
    log = get_logger("early")
    log.info("a", user_name=USER)
    configure_logging(pseudonymizer=PSEUDO, stream=out)
    log.info("b", user_name=USER)
    first, second = _lines(out)
    assert first["user_name"] == REDACTED and second["user_name"] == PSEUDO(USER)


def test_level_filters_lower_levels() -> None:
    """At level warning, info and debug calls write nothing."""
    out = io.StringIO()
    configure_logging(pseudonymizer=PSEUDO, stream=out, level="warning")
    log = get_logger("t")
    log.debug("d")
    log.info("i")
    log.warning("w")
    assert [line["event"] for line in _lines(out)] == ["w"]


def test_unknown_level_is_refused() -> None:
    """An unknown level name raises ValueError at configuration time."""
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging(pseudonymizer=None, level="chatty", stream=io.StringIO())


def test_terminal_gets_console_renderer_without_plaintext() -> None:
    """On a terminal the console renderer is used, still redacted."""
    out = _Tty()
    configure_logging(pseudonymizer=PSEUDO, stream=out)
    get_logger("t").info("hello", user_name=USER, password=PASSWORD)
    text = out.getvalue()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert PSEUDO(USER) in text and USER not in text and PASSWORD not in text


def _fail_with_locals(password: str, user_name: str) -> None:
    key_material = b"local-key-material-1234"
    raise RuntimeError(f"lookup failed for {user_name} ({len(key_material)})")


@pytest.mark.parametrize("as_json", [True, False])
def test_exception_text_is_scrubbed_and_has_no_locals(as_json: bool) -> None:
    """A traceback shows no local variables, and event plaintexts inside it are replaced."""
    out = io.StringIO()
    configure_logging(pseudonymizer=PSEUDO, stream=out, json=as_json)
    log = get_logger("t")
    try:
        _fail_with_locals(PASSWORD, USER)
    except RuntimeError:
        log.exception("lookup_failed", user_name=USER, password=PASSWORD)
    text = out.getvalue()
    assert "RuntimeError" in text and "_fail_with_locals" in text
    assert USER not in text and PASSWORD not in text
    assert "local-key-material" not in text
    assert PSEUDO(USER) in text
    if as_json:
        (line,) = _lines(out)
        assert PSEUDO(USER) in line["exception"]


def test_secret_keys_are_dropped_by_name_and_suffix() -> None:
    """Secret-named keys, their suffixes and RADIUS attribute spellings are removed."""
    event = {
        "event": "x",
        "password": "p1",
        "user_password": "p2",
        "secret": "p3",
        "shared_secret": "p4",
        "key": "p5",
        "chap_password": "p6",
        "coa_secret": "p7",
        "admin_password": "p8",
        "User-Password": "p9",
        "Shared-Secret": "p10",
        "keep": "ok",
    }
    assert _redact(event) == {"event": "x", "keep": "ok"}


def test_personal_keys_are_pseudonymised() -> None:
    """Each personal key's value is replaced by its pseudonym, None stays None."""
    event = {
        "event": "x",
        "user_name": "u1",
        "username": "u2",
        "calling_station_id": "csid",
        "called_station_id": "AP-1:ssid",
        "nas_ip": "192.0.2.1",
        "client_ip": "198.51.100.9",
        "framed_ip": "100.64.0.9",
        "device_id": "dev-123",
        "User-Name": "u3",
        "mac": None,
    }
    out = _redact(event)
    for name in event:
        if name not in ("event", "mac"):
            value = event[name]
            assert out[name] == PSEUDO(str(value)), name
    assert out["mac"] is None


def test_mac_spellings_share_one_pseudonym() -> None:
    """A MAC written in different spellings gets the same pseudonym."""
    spellings = [
        "0a:1b:2c:3d:4e:5f",
        "0A-1B-2C-3D-4E-5F",
        "0a1b.2c3d.4e5f",
        bytes.fromhex("0a1b2c3d4e5f"),
    ]
    values = {_redact({"mac": s})["mac"] for s in spellings}
    assert values == {PSEUDO("0a:1b:2c:3d:4e:5f")}


def test_nested_structures_are_cleaned() -> None:
    """Secrets and personal keys inside nested dicts and lists are handled too."""
    event = {
        "event": "x",
        "request": {"User-Name": "u1", "User-Password": "pw", "NAS-Port": 7},
        "items": [Secret("s1"), {"mac": "00:11:22:33:44:55"}, ("a", Secret("s2"))],
        "peer": ("192.0.2.10", 1812),
    }
    out = _redact(event)
    assert out["request"] == {"User-Name": PSEUDO("u1"), "NAS-Port": 7}
    assert out["items"][0] == MASK
    assert out["items"][1] == {"mac": PSEUDO("00:11:22:33:44:55")}
    assert out["items"][2] == ("a", MASK)
    assert out["peer"] == [PSEUDO("192.0.2.10"), PSEUDO("1812")]
    assert "s1" not in repr(out) and "pw" not in repr(out)


def test_plaintexts_in_other_fields_are_replaced() -> None:
    """A user name or password repeated in free text of the same event is replaced."""
    event = {
        "event": f"rejected {USER}",
        "detail": f"tried {PASSWORD} for {USER}",
        "user_name": USER,
        "password": PASSWORD,
    }
    out = _redact(event)
    assert out["event"] == f"rejected {PSEUDO(USER)}"
    assert out["detail"] == f"tried {MASK} for {PSEUDO(USER)}"


def test_secret_as_event_and_deep_nesting_never_render() -> None:
    """A Secret as the event text or nested deeper than the walk limit never shows."""
    deep: Any = Secret("deep-secret")
    for _ in range(20):
        deep = [deep]
    out = _redact({"event": Secret("event-secret"), "deep": deep})
    rendered = json.dumps(out, default=str)
    assert "event-secret" not in rendered and "deep-secret" not in rendered


def test_extra_keys_can_be_configured() -> None:
    """Extra secret and personal key names given in __init__ are honoured."""
    redact = RedactPersonal(PSEUDO, extra_secret_keys=["otp"], extra_personal_keys=["imsi"])
    out = redact(None, "info", {"event": "x", "otp": "123456", "imsi": "001010123456789"})
    assert out == {"event": "x", "imsi": PSEUDO("001010123456789")}


def test_dataclass_values_are_walked_field_by_field() -> None:
    """A dataclass logged as a value is rendered as its fields, with the same rules applied."""

    @dataclasses.dataclass(frozen=True)
    class Request:
        user_name: str
        password: str
        nas_port: int

    out = _redact({"event": "x", "request": Request(USER, PASSWORD, 3)})
    assert out["request"] == {"user_name": PSEUDO(USER), "nas_port": 3}
