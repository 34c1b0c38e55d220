"""The issue's proofs that nothing personal leaks, on a scripted day of traffic.

A real ``ispcare-radius serve`` answers FreeRADIUS's radtest/radclient: PAP,
CHAP, MS-CHAPv1 and MS-CHAPv2 logins, wrong passwords, unknown user names,
MAC authentication, a MAC lock, accounting Start/Interim/Stop with framed
addresses and Calling-Station-Id, and Accounting-On. Then the database is
dumped with ``pg_dump`` and the server's whole log is read: neither may hold
any plaintext personal value used. ``privacy export`` of one subscriber must
hold every one of theirs, with an audit row.

Store-level tests below show that a ciphertext moved to another row, column
or subscriber does not decrypt, and a source check that log calls only carry
exception type names, never exception text.
"""

from __future__ import annotations

import ast
import asyncio
import json
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import ispcare_radius
from ispcare_radius.aaa.methods.mscrypto import generate_nt_response
from ispcare_radius.privacy.crypto import DecryptError, FieldCipher
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.store import fields
from ispcare_radius.store.accounting import record_aad
from ispcare_radius.store.db import Pool
from ispcare_radius.store.events import KNOWN_TABLE, event_aad
from ispcare_radius.store.fields import Column
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.session_keys import session_aad
from ispcare_radius.store.subscribers import SubscriberRepository
from tests.support.peers import RadclientResult, radclient, require_tool
from tests.support.server_proc import ServerProcess, create_database, drop_database

NAS_SECRET = "pd-nas-secret-Wk39x"
NAS_IP = "192.0.2.77"  # NAS-IP-Address the NAS reports (not its source address)
PAP_USER, PAP_PW = "pd-pap-olga-11", "pd-pw-Pa4k"
CHAP_USER, CHAP_PW = "pd-chap-ivan-12", "pd-pw-Ch7m"
V1_USER, V1_PW = "pd-v1-mira-13", "pd-pw-V1q2"
V2_USER, V2_PW = "pd-v2-nils-14", "pd-pw-V2z9"
LOCKED_USER, LOCKED_PW = "pd-lock-rosa-15", "pd-pw-Lk3w"
OWNER_USER, OWNER_PW = "pd-owner-taro-16", "pd-pw-Ow8e"
UNKNOWN_USERS = ("pd-ghost-zed-98", "pd-ghost-yan-99")
WRONG_PW = "pd-wrong-Xx00"
LOCK_MAC = "0E-16-2A-3B-4C-15"
OTHER_MAC = "0e:16:2a:3b:4c:99"
DEVICE_MAC = "AA-16-2A-3B-4C-16"
UNKNOWN_MAC = "02-16-2A-3B-4C-77"
STATIONS = {  # Calling-Station-Id of each login (radtest's MS-CHAPv1 sends none)
    PAP_USER: "02-16-2A-3B-4C-11",
    CHAP_USER: "02:16:2a:3b:4c:12",
    V2_USER: "0216.2a3b.4c14",
}
STATIC_IP = "198.51.100.111"
FRAMED_IPS = ("100.64.16.11", "100.64.16.12", "100.64.16.13")
SESSION_IDS = ("pd-sess-0a11", "pd-sess-0a12", "pd-sess-0a13", "pd-sess-0a14")
AUTH_CHALLENGE = bytes.fromhex("1f2e3d4c5b6a79880f1e2d3c4b5a6978")
PEER_CHALLENGE = bytes.fromhex("b1c2d3e4f5061728394a5b6c7d8e9f01")
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)


def mac_spellings(mac: str) -> list[str]:
    """Every common notation of a MAC, upper and lower case."""
    hexes = mac.replace("-", "").replace(":", "").replace(".", "").lower()
    pairs = [hexes[i : i + 2] for i in range(0, 12, 2)]
    quads = [hexes[i : i + 4] for i in range(0, 12, 4)]
    forms = [hexes, ":".join(pairs), "-".join(pairs), ".".join(quads)]
    return sorted({mac, *forms, *(f.upper() for f in forms)})


def _radtest(srv: ServerProcess, kind: str, user: str, password: str) -> str | None:
    """``radtest -t KIND``; the reply code."""
    exe = require_tool("radtest")
    proc = subprocess.run(
        [exe, "-t", kind, user, password, f"127.0.0.1:{srv.auth_port}", "0", NAS_SECRET],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout + proc.stderr
    for code in ("Access-Accept", "Access-Reject"):
        if f"Received {code}" in out:
            return code
    return None


def _auth(srv: ServerProcess, attrs: str) -> RadclientResult:
    return radclient(f"127.0.0.1:{srv.auth_port}", "auth", NAS_SECRET, attrs)


def _pap(srv: ServerProcess, user: str, password: str, station: str) -> str | None:
    return _auth(
        srv,
        f'User-Name = "{user}", User-Password = "{password}", '
        f'Calling-Station-Id = "{station}", NAS-IP-Address = {NAS_IP}\n',
    ).code


def _chap(srv: ServerProcess, user: str, password: str, station: str) -> str | None:
    # radclient computes CHAP-Password from a cleartext CHAP-Password attribute.
    return _auth(
        srv,
        f'User-Name = "{user}", CHAP-Password = "{password}", '
        f'Calling-Station-Id = "{station}", NAS-IP-Address = {NAS_IP}\n',
    ).code


def _mschapv2(srv: ServerProcess, user: str, password: str, station: str) -> str | None:
    nt = generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, user.encode(), password)
    response = bytes((0x21, 0)) + PEER_CHALLENGE + bytes(8) + nt
    return _auth(
        srv,
        f'User-Name = "{user}", MS-CHAP-Challenge = 0x{AUTH_CHALLENGE.hex()}, '
        f'MS-CHAP2-Response = 0x{response.hex()}, Calling-Station-Id = "{station}", '
        f"NAS-IP-Address = {NAS_IP}, Message-Authenticator = 0x00\n",
    ).code


def _mac_auth(srv: ServerProcess, mac: str) -> str | None:
    return _auth(
        srv,
        f'User-Name = "{mac}", User-Password = "{mac}", Calling-Station-Id = "{mac}", '
        f"NAS-IP-Address = {NAS_IP}\n",
    ).code


def _acct_packet(status: str, at: datetime, **values: Any) -> str:
    lines = [f"Acct-Status-Type = {status}", f"NAS-IP-Address = {NAS_IP}"]
    if "user" in values:
        lines += [
            f'User-Name = "{values["user"]}"',
            f'Acct-Session-Id = "{values["session"]}"',
            f"NAS-Port = {values.get('port', 1)}",
            f'Calling-Station-Id = "{values["station"]}"',
            f"Framed-IP-Address = {values['framed']}",
        ]
    if "octets" in values:
        lines += [
            f"Acct-Input-Octets = {values['octets'][0]}",
            f"Acct-Output-Octets = {values['octets'][1]}",
            f"Acct-Session-Time = {values.get('seconds', 60)}",
        ]
    lines.append(f"Event-Timestamp = {int(at.timestamp())}")
    return "\n".join(lines) + "\n"


def _send_acct(srv: ServerProcess, packets: list[str]) -> None:
    exe = require_tool("radclient")
    path = srv.workdir / f"acct-{uuid.uuid4().hex[:8]}.txt"
    path.write_text("\n".join(packets))
    proc = subprocess.run(
        [
            *(exe, "-x", "-p", "1", "-r", "3", "-t", "2", "-f", str(path)),
            *(f"127.0.0.1:{srv.acct_port}", "acct", NAS_SECRET),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert out.count("Received Accounting-Response") == len(packets), out
    path.unlink()


def _fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def _pg_dump(dsn: str) -> str:
    exe = shutil.which("pg_dump")
    if exe is None:
        pytest.fail("pg_dump not installed (Debian package postgresql-client)")
    return subprocess.run(
        [exe, "--no-owner", "--data-only", "--inserts", dsn],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


def _day(srv: ServerProcess) -> list[tuple[str, str | None, str]]:
    """The scripted traffic: (what, reply code, expected code)."""
    results = [
        ("pap", _pap(srv, PAP_USER, PAP_PW, STATIONS[PAP_USER]), "Access-Accept"),
        ("pap wrong", _pap(srv, PAP_USER, WRONG_PW, STATIONS[PAP_USER]), "Access-Reject"),
        ("chap", _chap(srv, CHAP_USER, CHAP_PW, STATIONS[CHAP_USER]), "Access-Accept"),
        ("chap wrong", _chap(srv, CHAP_USER, WRONG_PW, STATIONS[CHAP_USER]), "Access-Reject"),
        ("mschap", _radtest(srv, "mschap", V1_USER, V1_PW), "Access-Accept"),
        ("mschapv2", _mschapv2(srv, V2_USER, V2_PW, STATIONS[V2_USER]), "Access-Accept"),
        ("mschapv2 wrong", _mschapv2(srv, V2_USER, WRONG_PW, STATIONS[V2_USER]), "Access-Reject"),
        ("locked", _pap(srv, LOCKED_USER, LOCKED_PW, LOCK_MAC), "Access-Accept"),
        ("locked other", _pap(srv, LOCKED_USER, LOCKED_PW, OTHER_MAC), "Access-Reject"),
        ("mac", _mac_auth(srv, DEVICE_MAC), "Access-Accept"),
        ("mac unknown", _mac_auth(srv, UNKNOWN_MAC), "Access-Reject"),
    ]
    for ghost in UNKNOWN_USERS:
        results.append(("unknown", _pap(srv, ghost, WRONG_PW, UNKNOWN_MAC), "Access-Reject"))
    pap = {"user": PAP_USER, "station": STATIONS[PAP_USER]}
    _send_acct(
        srv,
        [
            _acct_packet("Start", BASE, session=SESSION_IDS[0], framed=FRAMED_IPS[0], **pap),
            _acct_packet(
                "Interim-Update",
                BASE + timedelta(minutes=5),
                session=SESSION_IDS[0],
                framed=FRAMED_IPS[0],
                octets=(1000, 2000),
                seconds=300,
                **pap,
            ),
            _acct_packet(
                "Stop",
                BASE + timedelta(minutes=9),
                session=SESSION_IDS[0],
                framed=FRAMED_IPS[0],
                octets=(1500, 2500),
                seconds=540,
                **pap,
            ),
            _acct_packet(
                "Start",
                BASE + timedelta(minutes=20),
                session=SESSION_IDS[1],
                framed=FRAMED_IPS[1],
                port=2,
                **pap,
            ),
            _acct_packet(
                "Start",
                BASE + timedelta(minutes=21),
                user=CHAP_USER,
                station=STATIONS[CHAP_USER],
                session=SESSION_IDS[2],
                framed=FRAMED_IPS[2],
                port=3,
            ),
            _acct_packet(
                "Start",
                BASE + timedelta(minutes=22),
                user=UNKNOWN_USERS[0],
                station=UNKNOWN_MAC,
                session=SESSION_IDS[3],
                framed=STATIC_IP,
                port=4,
            ),
            _acct_packet("Accounting-On", BASE + timedelta(minutes=30)),
        ],
    )
    srv.wait_applied()  # the sessions follow from acct_pending, off the reply path
    return results


@pytest.mark.interop
def test_a_day_of_traffic_leaves_no_plaintext_and_exports_everything(
    pg_admin_dsn: str, tmp_path: Path
) -> None:
    """pg_dump and the complete server log hold none of the personal values used;
    ``privacy export`` of the PAP subscriber holds every one of theirs, audited."""
    require_tool("radclient")
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(
        tmp_path / "srv",
        dsn,
        probe_secret=NAS_SECRET.encode(),
        extra_config='\n[auth]\nmethods = ["pap", "chap", "mschap", "mschapv2", "mac"]\n',
    )
    try:
        srv.setup()
        srv.watch_applier()
        srv.cli(
            "nas", "add", "pd-bras", "127.0.0.1", "--secret", NAS_SECRET, "--vendor", "mikrotik"
        )
        srv.cli("plan", "add", "pd-plan", "--download", "8M", "--interim-interval", "300")
        for user, password in (
            (PAP_USER, PAP_PW),
            (CHAP_USER, CHAP_PW),
            (V1_USER, V1_PW),
            (V2_USER, V2_PW),
            (LOCKED_USER, LOCKED_PW),
            (OWNER_USER, OWNER_PW),
        ):
            srv.cli(
                "subscriber", "add", user, "--plan", "pd-plan", "--password-stdin",
                input=password + "\n",
            )  # fmt: skip
        srv.cli("subscriber", "set", PAP_USER, "--static-ip", STATIC_IP, "--account-ref", "PD-1")
        srv.cli("subscriber", "set", LOCKED_USER, "--mac-lock", LOCK_MAC)
        srv.cli("device", "add", DEVICE_MAC, "--subscriber", OWNER_USER)
        srv.start()
        results = _day(srv)
        assert [r[1] for r in results] == [r[2] for r in results], results
        assert srv.stop() == 0
        dump = _pg_dump(dsn)
        log = srv.log_path.read_text()
        export_path = tmp_path / "export.json"
        srv.cli(
            "privacy", "export", PAP_USER, "--reason", "pd-case-1", "--yes",
            "--out", str(export_path),
        )  # fmt: skip
        doc = json.loads(export_path.read_text())
        audit = _fetch(dsn, "SELECT detail FROM audit_log WHERE action = 'privacy.export'")
    finally:
        srv.kill()
        drop_database(pg_admin_dsn, name)

    # The day did write rows and log lines, so absence below means something.
    for table in (
        "subscribers",
        "devices",
        "auth_events",
        "auth_rejects_unknown",
        "acct_records",
        "sessions_closed",
        "usage",
    ):
        assert f"INSERT INTO public.{table}" in dump, table  # or one of its partitions
    assert log.count('"event": "request"') >= len(results)

    plaintexts = [NAS_SECRET, NAS_IP, STATIC_IP, WRONG_PW, *FRAMED_IPS, *SESSION_IDS]
    plaintexts += [PAP_USER, CHAP_USER, V1_USER, V2_USER, LOCKED_USER, OWNER_USER, *UNKNOWN_USERS]
    plaintexts += [PAP_PW, CHAP_PW, V1_PW, V2_PW, LOCKED_PW, OWNER_PW]
    for mac in (*STATIONS.values(), LOCK_MAC, OTHER_MAC, DEVICE_MAC, UNKNOWN_MAC):
        plaintexts += mac_spellings(mac)
    for value in plaintexts:
        assert value not in dump, f"a personal value is in the dump: {value}"
        assert value.encode().hex() not in dump, f"a personal value is in the dump as hex: {value}"
        assert value not in log, f"a personal value is in the server log: {value}"

    # The export holds every personal value written for the PAP subscriber.
    text = json.dumps(doc)
    for value in (PAP_USER, STATIC_IP, NAS_IP, *FRAMED_IPS[:2], *SESSION_IDS[:2]):
        assert value in text, value
    assert STATIONS[PAP_USER] in text
    for value in (CHAP_USER, FRAMED_IPS[2], SESSION_IDS[2], UNKNOWN_USERS[0], PAP_PW):
        assert value not in text, value
    assert [e["result"] for e in doc["login_history"]] == ["accept", "reject"]
    assert {s["close_reason"] for s in doc["sessions"]} == {"stop", "nas_reboot"}
    assert len(doc["accounting_records"]) == 4
    [row] = audit
    detail = json.loads(row["detail"]) if isinstance(row["detail"], str) else row["detail"]
    assert detail["reason"] == "pd-case-1" and detail["counts"]["sessions"] == 2


# --- moved ciphertext does not decrypt -------------------------------------------


async def _subscriber_cipher(pool: Pool, data_keys: DataKeyCache, sid: int) -> FieldCipher:
    async with pool.acquire() as conn:
        wrapped = await conn.fetchval("SELECT wrapped_key FROM subscribers WHERE id = $1", sid)
    return data_keys.cipher(sid, bytes(wrapped))


async def test_subscriber_field_moved_to_another_column_or_subscriber_fails(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> None:
    """A user name blob copied into the password column, or onto another subscriber, fails."""
    repo = SubscriberRepository(pg_pool, system_keys, master_keys, data_keys)
    a = await repo.add("mv-anna-1", "mv-pw-1", plan=None, static_ipv4="198.51.100.1")
    b = await repo.add("mv-boris-2", "mv-pw-2", plan=None)
    async with pg_pool.acquire() as conn:
        await conn.execute(
            "UPDATE subscribers SET password_enc = user_name_enc,"
            " static_ipv6_enc = static_ipv4_enc WHERE id = $1",
            a,
        )
        await conn.execute(
            "UPDATE subscribers SET user_name_enc = (SELECT user_name_enc FROM subscribers"
            " WHERE id = $1) WHERE id = $2",
            a,
            b,
        )
        rows = {
            r["id"]: r
            for r in await conn.fetch("SELECT * FROM subscribers WHERE id = ANY($1)", [a, b])
        }
    ca = await _subscriber_cipher(pg_pool, data_keys, a)
    cb = await _subscriber_cipher(pg_pool, data_keys, b)
    # In place, the original still opens: the failures below are the move.
    assert fields.unseal(ca, Column.USER_NAME, a, rows[a]["user_name_enc"]) == b"mv-anna-1"
    with pytest.raises(DecryptError):
        fields.unseal(ca, Column.PASSWORD, a, rows[a]["password_enc"])
    with pytest.raises(DecryptError):
        fields.unseal(ca, Column.STATIC_IPV6, a, rows[a]["static_ipv6_enc"])
    with pytest.raises(DecryptError):  # under b's key and b's id
        fields.unseal(cb, Column.USER_NAME, b, rows[b]["user_name_enc"])
    with pytest.raises(DecryptError):  # even with a's key, bound to a's id
        fields.unseal(ca, Column.USER_NAME, b, rows[b]["user_name_enc"])


async def test_auth_event_and_accounting_blobs_moved_between_rows_fail(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> None:
    """An auth-event, accounting-record or session blob under another row, column or
    subscriber does not open; in its own place it does."""
    repo = SubscriberRepository(pg_pool, system_keys, master_keys, data_keys)
    a = await repo.add("mv-cara-3", "mv-pw-3", plan=None)
    b = await repo.add("mv-dmitri-4", "mv-pw-4", plan=None)
    ca = await _subscriber_cipher(pg_pool, data_keys, a)
    cb = await _subscriber_cipher(pg_pool, data_keys, b)
    e1, e2, r1, r2 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    when = datetime(2026, 5, 5, tzinfo=UTC)
    name_blob = ca.seal(b"mv-cara-3", event_aad(KNOWN_TABLE, "user_name", e1, a))
    station_blob = ca.seal(
        b"02-00-00-00-00-03", event_aad(KNOWN_TABLE, "calling_station_id", e1, a)
    )
    framed_blob = ca.seal(b"100.64.0.3", record_aad("framed_ip", r1, a))
    async with pg_pool.acquire() as conn:
        for eid, sid, name, station in ((e1, a, name_blob, station_blob), (e2, a, name_blob, None)):
            await conn.execute(
                "INSERT INTO auth_events (time, id, subscriber_id, nas_id, result, reason, method,"
                " user_name_enc, calling_station_id_enc) VALUES ($1, $2, $3, 1, 'accept', 'ok',"
                " 'pap', $4, $5)",
                when,
                eid,
                sid,
                name,
                station,
            )
        # The name blob copied to e2 (another row) and into e1's station column.
        await conn.execute(
            "UPDATE auth_events SET calling_station_id_enc = user_name_enc WHERE id = $1", e2
        )
        for rid in (r1, r2):
            await conn.execute(
                "INSERT INTO acct_records (time, id, subscriber_id, attribution, nas_id,"
                " status_type, record_key, event_time, framed_ip_enc)"
                " VALUES ($1, $2, $3, 'subscriber', 1, 1, $4, $1, $5)",
                when,
                rid,
                a,
                rid.bytes,
                framed_blob,
            )
        rows = {
            r["id"]: r
            for r in await conn.fetch("SELECT * FROM auth_events WHERE subscriber_id = $1", a)
        }
    event = rows[e1]
    assert ca.open(bytes(event["user_name_enc"]), event_aad(KNOWN_TABLE, "user_name", e1, a))
    with pytest.raises(DecryptError):  # same blob, another row
        ca.open(bytes(rows[e2]["user_name_enc"]), event_aad(KNOWN_TABLE, "user_name", e2, a))
    with pytest.raises(DecryptError):  # same blob, another column
        ca.open(
            bytes(rows[e2]["calling_station_id_enc"]),
            event_aad(KNOWN_TABLE, "calling_station_id", e2, a),
        )
    with pytest.raises(DecryptError):  # moved to another subscriber
        cb.open(bytes(event["user_name_enc"]), event_aad(KNOWN_TABLE, "user_name", e1, b))
    # Accounting: r2 holds r1's framed-IP blob.
    assert ca.open(framed_blob, record_aad("framed_ip", r1, a)) == b"100.64.0.3"
    with pytest.raises(DecryptError):
        ca.open(framed_blob, record_aad("framed_ip", r2, a))
    with pytest.raises(DecryptError):
        ca.open(framed_blob, record_aad("nas_ip", r1, a))
    with pytest.raises(DecryptError):
        cb.open(framed_blob, record_aad("framed_ip", r1, b))
    # A session's sealed fields are its first record's: the same binding holds.
    assert ca.open(framed_blob, session_aad("framed_ip", r1, a)) == b"100.64.0.3"
    with pytest.raises(DecryptError):
        ca.open(framed_blob, session_aad("framed_ip", r2, a))


# --- exceptions carry no packet data into logs --------------------------------------

_LOG_METHODS = frozenset({"debug", "info", "warning", "warn", "error", "critical", "exception"})


def _log_calls(tree: ast.AST) -> list[ast.Call]:
    """Calls that look like structlog calls: ``<something log-ish>.<level>(...)``."""
    calls = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in _LOG_METHODS:
            continue
        target = ast.unparse(node.func.value)
        if "log" in target.lower():
            calls.append(node)
    return calls


# Attributes of an exception that are slugs, not text taken from the input.
_SLUG_ATTRIBUTES = frozenset({"sqlstate", "reason", "outcome"})


def _leaks_exception_text(value: ast.expr, names: set[str]) -> bool:
    """Whether a log field value could carry an exception's message: it names a
    caught exception other than inside ``type(...)`` or through a slug attribute."""
    safe: set[int] = set()
    for outer in ast.walk(value):
        if (
            isinstance(outer, ast.Call)
            and isinstance(outer.func, ast.Name)
            and outer.func.id == "type"
        ):
            safe.update(id(n) for arg in outer.args for n in ast.walk(arg))
        if isinstance(outer, ast.Attribute) and outer.attr in _SLUG_ATTRIBUTES:
            safe.add(id(outer.value))
    return any(
        isinstance(n, ast.Name) and n.id in names and id(n) not in safe for n in ast.walk(value)
    )


def test_log_calls_carry_exception_types_never_exception_text() -> None:
    """No log call passes ``exc_info``/``.exception`` or an exception object or its text.

    The redaction processor scrubs a traceback only of values that are also
    given as personal fields of the same event; an exception raised from a
    packet (a user name in a ValueError) logged on its own would slip
    through. So every call site logs the exception's type name instead.
    """
    root = Path(ispcare_radius.__file__).parent
    offenders: list[str] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        handler_names = {
            h.name for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler) and h.name
        }
        for call in _log_calls(tree):
            where = f"{path.relative_to(root)}:{call.lineno}"
            if isinstance(call.func, ast.Attribute) and call.func.attr == "exception":
                offenders.append(f"{where} uses .exception()")
            for kw in call.keywords:
                if kw.arg in ("exc_info", "stack_info"):
                    offenders.append(f"{where} passes {kw.arg}")
                elif kw.arg is not None and _leaks_exception_text(kw.value, handler_names):
                    offenders.append(f"{where} logs {kw.arg}={ast.unparse(kw.value)}")
            for arg in call.args:
                if isinstance(arg, ast.JoinedStr):
                    offenders.append(f"{where} formats its event text")
    assert offenders == []


def test_log_call_scan_finds_what_it_forbids(tmp_path: Path) -> None:
    """The scan above is not vacuous: each forbidden form is caught."""
    source = (
        "try:\n    pass\nexcept ValueError as exc:\n"
        "    _log.error('a', error=str(exc))\n"
        "    _log.exception('b')\n"
        "    _log.warning('c', exc_info=True)\n"
        "    _log.info(f'd {exc}')\n"
        "    _log.error('e', error=type(exc).__name__)\n"
    )
    tree = ast.parse(source)
    calls = _log_calls(tree)
    assert len(calls) == 5
    assert _leaks_exception_text(calls[0].keywords[0].value, {"exc"})
    assert not _leaks_exception_text(calls[4].keywords[0].value, {"exc"})
    cause = ast.parse("type(exc.__cause__ or exc).__name__", mode="eval").body
    assert not _leaks_exception_text(cause, {"exc"})
    assert _leaks_exception_text(ast.parse("exc.args[0]", mode="eval").body, {"exc"})


def test_metric_labels_are_nas_names_never_request_values() -> None:
    """Every counter bump is labelled by a drop reason or reply code and, at most, the
    NAS's configured name: never a user name, address or other request value."""
    root = Path(ispcare_radius.__file__).parent
    labels: list[str] = []
    for path in sorted((root / "server").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("drop", "request", "reply")
                and ast.unparse(node.func.value).endswith("counters")
            ):
                labels += [ast.unparse(arg) for arg in node.args[1:]]
    assert labels, "no counter call sites found"
    bad = [
        label for label in labels if not (label == "name" or label.endswith((".name", ".nas_name")))
    ]
    assert bad == []
