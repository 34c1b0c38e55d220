"""``ispcare-radius sessions list|show|close|who-had`` against a real PostgreSQL.

Sessions are made by the real accounting handler and writer; the commands run
in-process through ``cli.main.run`` (in a worker thread: it starts its own
event loop) with a DSN and master key file pointing at the test database.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from ispcare_radius.aaa.accounting import AccountingHandler, AcctStatus
from ispcare_radius.aaa.model import Nas
from ispcare_radius.aaa.request import Request
from ispcare_radius.cli.main import run
from ispcare_radius.cli.sessions import duration, human_bytes
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.protocol.authenticator import build_request
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.packet import encode_attributes, parse
from ispcare_radius.store.accounting import AccountingWriter
from ispcare_radius.store.applier import SessionApplier
from ispcare_radius.store.db import Pool
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.nas import NasRepository
from ispcare_radius.store.session_keys import session_aad
from ispcare_radius.store.session_query import ip_candidates
from ispcare_radius.store.sessions import SessionTracker
from ispcare_radius.store.subscribers import SubscriberRepository

SECRET = "cli-sess-secret"
ALICE, BOB = "alice-cli-1", "bob-cli-2"
# Event times in the past: who-had bounds active sessions by the real clock.
T0 = datetime(2025, 3, 4, 10, 0, 0, tzinfo=UTC)
IPV4 = "100.64.9.9"


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def v6_prefix(text: str) -> bytes:
    """RFC 3162 section 2.3 layout: Reserved, Prefix-Length, Prefix."""
    net = ipaddress.IPv6Network(text)
    return bytes((0, net.prefixlen)) + net.network_address.packed[: (net.prefixlen + 7) // 8]


def packet(
    status: AcctStatus,
    sid: bytes,
    user: str,
    at: datetime,
    *,
    port: int = 7,
    framed_ip: str | None = IPV4,
    delegated: str | None = None,
    octets: tuple[int, int] | None = None,
    seconds: int | None = None,
) -> list[tuple[int, bytes]]:
    attrs: list[tuple[int, bytes]] = [
        (40, u32(int(status))),
        (44, sid),
        (1, user.encode()),
        (4, bytes((198, 51, 100, 1))),
        (5, u32(port)),
        (31, b"02-AA-BB-CC-DD-EE"),
        (55, u32(int(at.timestamp()))),
    ]
    if framed_ip is not None:
        attrs.append((8, ipaddress.IPv4Address(framed_ip).packed))
    if delegated is not None:
        attrs.append((123, v6_prefix(delegated)))
    if octets is not None:
        attrs += [(42, u32(octets[0])), (43, u32(octets[1]))]
    if seconds is not None:
        attrs.append((46, u32(seconds)))
    return attrs


class Sender:
    """Sends accounting through the real handler for one NAS."""

    def __init__(self, handler: AccountingHandler, nas: Nas, applier: SessionApplier) -> None:
        self.handler = handler
        self.nas = nas
        self.applier = applier
        self.ident = 0

    async def send(self, attrs: list[tuple[int, bytes]]) -> None:
        self.ident = (self.ident + 1) % 256
        data = build_request(
            int(Code.ACCOUNTING_REQUEST),
            self.ident,
            encode_attributes(attrs),
            SECRET.encode(),
            message_authenticator=False,
        )
        reply = await self.handler.handle(
            Request(parse(data), self.nas, ("127.0.0.1", 41000), 0.0, None)
        )
        assert reply.code == int(Code.ACCOUNTING_RESPONSE), reply.reason
        await self.applier.drain()


class Clock:
    """Arrival times: a little after the event times the packets carry."""

    def __init__(self) -> None:
        self.now = T0.timestamp()

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
async def subscribers(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> SubscriberRepository:
    repo = SubscriberRepository(pg_pool, system_keys, master_keys, data_keys)
    await repo.add(ALICE, "pw-a", plan=None, account_ref="ACC-100")
    await repo.add(BOB, "pw-b", plan=None, account_ref="ACC-200")
    return repo


@pytest.fixture
async def writer(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys
) -> AsyncIterator[AccountingWriter]:
    w = AccountingWriter(pg_pool, system_keys, DataKeyCache(master_keys))
    yield w
    await w.close()


@pytest.fixture
async def senders(
    pg_pool: Pool,
    system_keys: SystemKeys,
    data_keys: DataKeyCache,
    writer: AccountingWriter,
    subscribers: SubscriberRepository,
) -> tuple[Sender, Sender]:
    repo = NasRepository(pg_pool, system_keys)
    edge1 = await repo.add("edge-1", "127.0.0.1", SECRET)
    edge2 = await repo.add("edge-2", "127.0.0.2", SECRET)
    directory = CachedSubscriberDirectory(pg_pool, system_keys, data_keys)
    handler = AccountingHandler(recorder=writer, directory=directory, clock=Clock())
    applier = SessionApplier(pg_pool, SessionTracker(system_keys.blind_index))
    return Sender(handler, edge1, applier), Sender(handler, edge2, applier)


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


class Cli:
    """``ispcare-radius --dsn ... --master-key-file ... ARGS`` in-process."""

    def __init__(self, dsn: str, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.base = ["--dsn", dsn, "--master-key-file", str(key_file)]
        self.capsys = capsys

    def _call(self, args: tuple[str, ...]) -> int:
        try:
            return run([*self.base, *args])
        except SystemExit as exc:  # argparse errors and die()
            return int(exc.code or 0)

    async def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = await asyncio.to_thread(self._call, args)
        out, err = self.capsys.readouterr()
        return code, out, err

    async def ok(self, *args: str) -> str:
        code, out, err = await self(*args)
        assert code == 0, err
        return out


@pytest.fixture
def cli(
    pg_dsn: str,
    tmp_path: Path,
    master_keys: MasterKeys,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Cli:
    for name in ("ISPCARE_CONFIG", "ISPCARE_DSN", "ISPCARE_MASTER_KEY", "ISPCARE_MASTER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ISPCARE_STATE_DIR", str(tmp_path / "state"))
    # The master_keys fixture wrote this file; the CLI opens the same keys.
    return Cli(pg_dsn, tmp_path / "keys" / "master.json", capsys)


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ispcare-radius: error: ")
    return lines[0]


async def audit_rows(
    db: asyncpg.Connection[asyncpg.Record], action: str
) -> list[tuple[int | None, dict[str, object], str]]:
    rows = await db.fetch(
        "SELECT subscriber_id, detail::text AS detail FROM audit_log WHERE action = $1"
        " ORDER BY time, id",
        action,
    )
    return [(r["subscriber_id"], json.loads(r["detail"]), r["detail"]) for r in rows]


async def subscriber_id(db: asyncpg.Connection[asyncpg.Record], account_ref: str) -> int:
    return int(await db.fetchval("SELECT id FROM subscribers WHERE account_ref = $1", account_ref))


# -- list and show ---------------------------------------------------------------


async def test_list_filters_by_nas_subscriber_and_state(
    senders: tuple[Sender, Sender], cli: Cli
) -> None:
    """list shows active sessions with opened user name and IP; filters narrow it;
    --closed shows the stopped one with its reason."""
    edge1, edge2 = senders
    await edge1.send(packet(AcctStatus.START, b"A-1", ALICE, T0))
    await edge2.send(packet(AcctStatus.START, b"B-1", BOB, T0 + timedelta(seconds=5), port=8))
    out = await cli.ok("sessions", "list")
    lines = out.splitlines()
    assert lines[0].split() == [
        "id",
        "started",
        "nas",
        "subscriber",
        "framed_ip",
        "duration",
        "in",
        "out",
        "state",
    ]
    # Newest first: Bob started after Alice.
    assert BOB in lines[1] and "edge-2" in lines[1] and ALICE in lines[2]
    assert IPV4 in lines[2] and "active" in lines[2]

    only_edge1 = await cli.ok("sessions", "list", "--nas", "edge-1")
    assert ALICE in only_edge1 and BOB not in only_edge1
    only_bob = await cli.ok("sessions", "list", "--subscriber", BOB.upper())
    assert BOB in only_bob and ALICE not in only_bob
    later = await cli.ok("sessions", "list", "--since", (T0 + timedelta(seconds=1)).isoformat())
    assert BOB in later and ALICE not in later
    assert (await cli.ok("sessions", "list", "--closed")).strip() == "(none)"

    await edge1.send(
        packet(
            AcctStatus.STOP,
            b"A-1",
            ALICE,
            T0 + timedelta(seconds=600),
            octets=(3 * 1024 * 1024, 2048),
            seconds=600,
        )
    )
    closed = await cli.ok("sessions", "list", "--closed")
    assert ALICE in closed and BOB not in closed
    assert "stop" in closed and "00:10:00" in closed and "3.0 MiB" in closed
    assert ALICE not in await cli.ok("sessions", "list")

    code, _, err = await cli("sessions", "list", "--nas", "edge-9")
    assert code == 1 and "no NAS named 'edge-9'" in one_line_error(err)
    code, _, err = await cli("sessions", "list", "--subscriber", "nobody-here")
    assert code == 1 and "no such subscriber" in one_line_error(err)


async def test_show_opens_every_field_and_says_start_lost(
    senders: tuple[Sender, Sender], cli: Cli, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    """show prints the decrypted Acct-Session-Id, Calling-Station-Id, NAS IP, framed
    IPv4/IPv6, counters and interim interval; a session made by an Interim is "Start lost"."""
    edge1, _ = senders
    await edge1.send(
        packet(
            AcctStatus.INTERIM_UPDATE,
            b"sess-xyz-77",
            ALICE,
            T0 + timedelta(seconds=300),
            delegated="2001:db8:77::/56",
            octets=(123_456, 789),
            seconds=120,
        )
    )
    [row] = await db.fetch("SELECT id FROM sessions_active")
    out = await cli.ok("sessions", "show", str(row["id"]))
    for expected in (
        f"session: {row['id']}",
        "state: active",
        f"user name: {ALICE}",
        "nas: edge-1 (id 1)",
        "nas ip: 198.51.100.1",
        "acct-session-id: sess-xyz-77",
        "calling-station-id: 02-AA-BB-CC-DD-EE",
        f"framed ipv4: {IPV4}",
        "framed ipv6: 2001:db8:77::/56",
        "start seen: no (Start lost)",
        f"started: {(T0 + timedelta(seconds=180)).isoformat()}",
        "session time (NAS): 120 s",
        "input: 123456 (120.6 KiB), wraps 0",
        "output: 789 (789 B), wraps 0",
        "interim interval: -",
    ):
        assert expected in out.splitlines(), (expected, out)

    code, _, err = await cli("sessions", "show", "6f1c3a52-7d0e-4f3e-9a55-000000000000")
    assert code == 1 and "no session with this id" in one_line_error(err)
    code, _, err = await cli("sessions", "show", "not-a-uuid")
    assert code == 2 and "bad session id" in one_line_error(err)


# -- close -------------------------------------------------------------------------


async def test_close_moves_the_row_keeps_it_decryptable_and_audits(
    senders: tuple[Sender, Sender],
    cli: Cli,
    db: asyncpg.Connection[asyncpg.Record],
    data_keys: DataKeyCache,
) -> None:
    """close moves the session to sessions_closed as 'admin' at its last event time,
    with the same id and sealed fields; the audit row holds no personal value."""
    edge1, _ = senders
    await edge1.send(packet(AcctStatus.START, b"A-close", ALICE, T0))
    last = T0 + timedelta(seconds=300)
    await edge1.send(
        packet(AcctStatus.INTERIM_UPDATE, b"A-close", ALICE, last, octets=(10, 20), seconds=300)
    )
    [before] = await db.fetch("SELECT * FROM sessions_active")
    out = await cli.ok("sessions", "close", str(before["id"]), "--reason", "ticket 4411")
    assert f"closed session {before['id']}" in out

    assert await db.fetch("SELECT id FROM sessions_active") == []
    [after] = await db.fetch("SELECT * FROM sessions_closed")
    assert after["id"] == before["id"]
    assert (after["close_reason"], after["stopped_at"]) == ("admin", last)
    assert (after["input_octets"], after["output_octets"]) == (10, 20)
    sid = await subscriber_id(db, "ACC-100")
    assert after["subscriber_id"] == sid
    cipher = data_keys.cipher(
        sid, bytes(await db.fetchval("SELECT wrapped_key FROM subscribers WHERE id = $1", sid))
    )
    aad = session_aad("session_id", after["id"], sid)
    assert cipher.open(bytes(after["session_id_enc"]), aad) == b"A-close"
    assert (
        cipher.open(bytes(after["framed_ip_enc"]), session_aad("framed_ip", after["id"], sid))
        == IPV4.encode()
    )

    [(audit_sid, detail, raw)] = await audit_rows(db, "session.close")
    assert audit_sid == sid
    assert detail["session"] == str(before["id"]) and detail["reason"] == "ticket 4411"
    for personal in (ALICE, IPV4, "A-close", "02-AA-BB"):
        assert personal not in raw
    # The closed session still shows, opened.
    shown = await cli.ok("sessions", "show", str(before["id"]))
    assert "close reason: admin" in shown and "acct-session-id: A-close" in shown

    code, _, err = await cli("sessions", "close", str(before["id"]))
    assert code == 1 and "no active session with this id" in one_line_error(err)
    assert len(await audit_rows(db, "session.close")) == 1


# -- who-had -----------------------------------------------------------------------


async def test_who_had_ipv4_finds_the_holder_at_that_time_and_audits_every_ask(
    senders: tuple[Sender, Sender], cli: Cli, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    """The address went from Alice (closed) to Bob (active): each time gets the right
    one, one second after Alice's stop gets nobody, and every ask is audited."""
    edge1, edge2 = senders
    stop = T0 + timedelta(seconds=600)
    await edge1.send(packet(AcctStatus.START, b"A-1", ALICE, T0))
    await edge1.send(packet(AcctStatus.STOP, b"A-1", ALICE, stop, octets=(1, 1), seconds=600))
    bob_start = stop + timedelta(seconds=100)
    await edge2.send(packet(AcctStatus.START, b"B-1", BOB, bob_start, port=8))
    alice_id, bob_id = await subscriber_id(db, "ACC-100"), await subscriber_id(db, "ACC-200")

    async def ask(at: datetime, address: str = IPV4) -> str:
        return await cli.ok(
            "sessions", "who-had", address, "--at", at.isoformat(), "--reason", "LEA-2025-17"
        )

    inside = await ask(T0 + timedelta(seconds=300))
    assert ALICE in inside and "ACC-100" in inside and str(alice_id) in inside
    assert BOB not in inside and "edge-1" in inside
    assert ALICE in await ask(stop)  # the stop second itself is still Alice's
    after = await ask(stop + timedelta(seconds=1))
    assert after.strip() == "no session had this address at that time"
    now_bob = await ask(bob_start + timedelta(days=1))
    assert BOB in now_bob and "(active)" in now_bob and ALICE not in now_bob
    # Another address, and a naive time (taken as UTC), find nothing.
    assert "no session" in await ask(T0 + timedelta(seconds=300), "100.64.9.10")
    naive = await cli.ok(
        "sessions",
        "who-had",
        IPV4,
        "--at",
        (T0 + timedelta(seconds=300)).replace(tzinfo=None).isoformat(),
        "--reason",
        "LEA-2025-17",
    )
    assert ALICE in naive

    audits = await audit_rows(db, "who_had")
    assert [(a[0], a[1]["matches"]) for a in audits] == [
        (alice_id, 1),
        (alice_id, 1),
        (None, 0),
        (bob_id, 1),
        (None, 0),
        (alice_id, 1),
    ]
    first = audits[0][1]
    assert first["reason"] == "LEA-2025-17"
    assert first["at"] == (T0 + timedelta(seconds=300)).isoformat()
    assert first["subscriber_ids"] == [alice_id]
    for _, _, raw in audits:
        assert IPV4 not in raw and "100.64.9.10" not in raw and ALICE not in raw


async def test_who_had_ipv6_address_inside_a_delegated_prefix(
    senders: tuple[Sender, Sender], cli: Cli, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    """An address inside a session's /56 finds it; one outside the prefix does not."""
    edge1, _ = senders
    await edge1.send(
        packet(AcctStatus.START, b"A-6", ALICE, T0, framed_ip=None, delegated="2001:db8:1200::/56")
    )
    at = (T0 + timedelta(seconds=60)).isoformat()
    inside = await cli.ok(
        "sessions", "who-had", "2001:db8:1200:ab::1", "--at", at, "--reason", "r-6"
    )
    assert ALICE in inside and "ACC-100" in inside
    outside = await cli.ok("sessions", "who-had", "2001:db8:1300::1", "--at", at, "--reason", "r-6")
    assert "no session" in outside
    # The prefix itself, as given on a request, is looked up exactly.
    exact = await cli.ok("sessions", "who-had", "2001:db8:1200::/56", "--at", at, "--reason", "r-6")
    assert ALICE in exact
    audits = await audit_rows(db, "who_had")
    assert [a[1]["matches"] for a in audits] == [1, 0, 1]
    assert all("2001:db8" not in raw for _, _, raw in audits)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["who-had", "300.1.1.1", "--at", "2025-01-01T00:00:00Z", "--reason", "r"], "not an IPv4"),
        (["who-had", "100.64.0.1", "--at", "yesterday", "--reason", "r"], "bad time"),
        (["who-had", "100.64.0.1", "--at", "2025-01-01"], "--reason"),
        (["who-had", "100.64.0.1", "--reason", "r"], "--at"),
        (["list", "--limit", "0"], "limit must be between"),
        (["close", "42"], "bad session id"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Malformed arguments are refused before any database is opened."""
    with pytest.raises(SystemExit) as raised:
        run(["sessions", *args])
    assert raised.value.code == 2
    assert fragment in one_line_error(capsys.readouterr().err)


def test_ipv6_candidates_cover_the_address_and_its_prefixes() -> None:
    """An IPv6 address is looked up as /128 and as each prefix down to /32."""
    family, candidates = ip_candidates("2001:db8:1200:ab::1")
    assert family == "ipv6"
    assert candidates[0] == "2001:db8:1200:ab::1/128"
    for prefix in ("2001:db8:1200:ab::/64", "2001:db8:1200::/56", "2001:db8:1200::/48"):
        assert prefix in candidates
    assert "2001:db8::/32" in candidates and len(candidates) == 97
    assert ip_candidates(" 100.64.0.1 ") == ("ipv4", ["100.64.0.1"])
    with pytest.raises(ValueError) as raised:
        ip_candidates("100.64.0.1/24")
    assert "100.64" not in str(raised.value)


def test_human_units() -> None:
    """Byte counts and durations as operators read them."""
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536 * 1024, 5 * 2**40)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 MiB",
        "5.0 TiB",
    ]
    assert duration(3661) == "01:01:01" and duration(90061) == "1d 01:01:01"
    assert duration(-5) == "00:00:00"
