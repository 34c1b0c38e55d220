"""MAC authentication end to end in process: real PostgreSQL, real directory, real pipeline."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ispcare_radius.aaa.methods import DEFAULT_METHODS, REGISTRY
from ispcare_radius.aaa.methods.base import Attempt
from ispcare_radius.aaa.methods.mac import Mac, mac_of
from ispcare_radius.aaa.model import AuthEvent, Nas
from ispcare_radius.aaa.pipeline import AccessHandler, AuthSettings, read_credentials
from ispcare_radius.aaa.ports import MISS, CachedMacDirectory, MacDirectory
from ispcare_radius.aaa.reply import ReplyRenderer
from ispcare_radius.aaa.request import NOT_READY, Reply, Request
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.protocol.authenticator import hide_password, random_authenticator
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.protocol.dictionary import Dictionary
from ispcare_radius.protocol.packet import build_packet, encode_attributes, parse
from ispcare_radius.store.db import Pool
from ispcare_radius.store.devices import DeviceRepository
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.plans import PlanRepository
from ispcare_radius.store.subscribers import SubscriberRepository

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"mac-unit-secret"
NOW = 1_800_000_000.0
NAS = Nas(1, "hotspot-1", ipaddress.ip_network("192.0.2.1/32"), Secret(SECRET), vendor="mikrotik")
METHODS = (*DEFAULT_METHODS, "mac")
DEVICE_HEX = "0a1b2c3d4e5f"
FORMS = ("0A:1B:2C:3D:4E:5F", "0a-1b-2c-3d-4e-5f", "0a1b.2c3d.4e5f", "0A1B2C3D4E5F")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Events:
    """Collects auth events in memory (the pipeline's sink port)."""

    def __init__(self) -> None:
        self.events: list[AuthEvent] = []

    def submit(self, event: AuthEvent) -> None:
        self.events.append(event)


@pytest.fixture(scope="module")
def dictionary() -> Dictionary:
    d, warnings = load_dictionary([ROOT / "dictionaries" / "dictionary"])
    assert warnings == []
    return d


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def repo(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> SubscriberRepository:
    return SubscriberRepository(pg_pool, system_keys, master_keys, data_keys)


@pytest.fixture
def devices(pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache) -> DeviceRepository:
    return DeviceRepository(pg_pool, system_keys.blind_index, data_keys)


@pytest.fixture
def directory(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, clock: Clock
) -> CachedSubscriberDirectory:
    # Its own key cache, as in another process than the repositories'.
    return CachedSubscriberDirectory(
        pg_pool, system_keys, DataKeyCache(master_keys), ttl=30.0, negative_ttl=5.0, clock=clock
    )


def _handler(
    dictionary: Dictionary, directory: CachedSubscriberDirectory, events: Events
) -> AccessHandler:
    return AccessHandler(
        directory=directory,
        events=events,
        renderer=ReplyRenderer(dictionary),
        settings=AuthSettings(methods=METHODS),
        clock=lambda: NOW,
    )


def _request(
    user: bytes, password: bytes | None = None, *, calling: bytes | None = None
) -> Request:
    auth = random_authenticator()
    pairs: list[tuple[int, bytes]] = [(1, user)]
    if password is not None:
        pairs.append((2, hide_password(password, SECRET, auth)))
    if calling is not None:
        pairs.append((31, calling))
    raw = build_packet(1, 7, auth, encode_attributes(pairs))
    return Request(parse(raw), NAS, ("192.0.2.1", 1812), 0.0, None)


def _mac_request(form: str, password: str | None = None) -> Request:
    """As a MikroTik hotspot sends it: the MAC as User-Name and Calling-Station-Id."""
    return _request(
        form.encode(),
        None if password is None else password.encode(),
        calling=form.encode(),
    )


def _attrs(dictionary: Dictionary, reply: Reply) -> dict[str, object]:
    packet = parse(build_packet(2, 1, b"\x00" * 16, reply.attributes))
    return {d.name: v for d, v, _ in dictionary.decode(packet)}


async def _provision(
    pg_pool: Pool, repo: SubscriberRepository, devices: DeviceRepository, *, status: str = "active"
) -> int:
    await PlanRepository(pg_pool).add(
        "hotspot-10", download_kbps=10_000, upload_kbps=2_000, session_timeout=3600
    )
    sid = await repo.add("cafe-owner", "pw-cafe-71", plan="hotspot-10", status=status)
    await devices.add("0A-1B-2C-3D-4E-5F", subscriber="cafe-owner")
    return sid


# --- the method alone ---------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_mac_of_reads_all_four_notations_to_the_same_bytes(form: str) -> None:
    """Colons, dashes, Cisco dots and bare hex, either case, give the same 6 bytes."""
    assert mac_of(form.encode()) == bytes.fromhex(DEVICE_HEX)


@pytest.mark.parametrize(
    ("user", "password", "method"),
    [
        (b"0A-1B-2C-3D-4E-5F", b"0A-1B-2C-3D-4E-5F", "mac"),
        (b"0A-1B-2C-3D-4E-5F", b"0a1b2c3d4e5f", "mac"),  # same MAC, other notation
        (b"0A-1B-2C-3D-4E-5F", b"", "mac"),  # RouterOS mac-auth-password empty
        (b"0A-1B-2C-3D-4E-5F", None, "mac"),  # no password attribute at all
        (b"0A-1B-2C-3D-4E-5F", b"a-real-password", "pap"),  # a user named like a MAC
        (b"0A-1B-2C-3D-4E-5F", b"0A-1B-2C-3D-4E-50", "pap"),  # another MAC as password
        (b"someone", b"", "pap"),  # not a MAC: PAP, whatever the password
    ],
)
def test_precedence_between_mac_auth_and_pap(
    user: bytes, password: bytes | None, method: str
) -> None:
    """MAC auth only when the name is a MAC and the password is absent, empty or that MAC."""
    attempt = Attempt(_request(user, password), tuple(REGISTRY.values()))
    assert read_credentials(attempt, NOW) is None
    assert attempt.method is not None and attempt.method.name == method


def test_mac_auth_is_off_unless_configured() -> None:
    """With the default methods a MAC user and password stay an ordinary PAP login."""
    assert "mac" not in DEFAULT_METHODS and isinstance(REGISTRY["mac"], Mac)
    attempt = Attempt(_mac_request("0A-1B-2C-3D-4E-5F", "0A-1B-2C-3D-4E-5F"))
    assert read_credentials(attempt, NOW) is None
    assert attempt.method is not None and attempt.method.name == "pap"


FIXED = "hotspot-mac-Pw-31"


@pytest.mark.parametrize(
    ("password", "method"),
    [
        (FIXED.encode(), "mac"),  # the NAS-wide mac-auth-password
        (b"0A-1B-2C-3D-4E-5F", "mac"),  # the MAC still works
        (b"", "mac"),  # and the empty password
        (FIXED.encode() + b"x", "pap"),  # anything else is an ordinary PAP login
        (FIXED.upper().encode(), "pap"),
    ],
)
def test_fixed_mac_auth_password_is_accepted_besides_the_mac_and_empty(
    password: bytes, method: str
) -> None:
    """With ``mac_auth_password`` set, that exact password makes a MAC-named login MAC
    auth too; without the setting it stays PAP."""
    from ispcare_radius.aaa.methods import configure, resolve

    methods = configure(resolve(METHODS), mac_auth_password=Secret(FIXED))
    attempt = Attempt(_request(b"0A-1B-2C-3D-4E-5F", password), methods)
    assert read_credentials(attempt, NOW) is None
    assert attempt.method is not None and attempt.method.name == method
    plain = Attempt(_request(b"0A-1B-2C-3D-4E-5F", FIXED.encode()), resolve(METHODS))
    assert read_credentials(plain, NOW) is None
    assert plain.method is not None and plain.method.name == "pap"


def test_fixed_mac_auth_password_stays_out_of_reprs() -> None:
    """The setting is a Secret: neither the settings nor the method print it."""
    settings = AuthSettings(methods=METHODS, mac_auth_password=Secret(FIXED))
    assert FIXED not in repr(settings)
    assert FIXED not in repr(Mac(Secret(FIXED))) and FIXED not in repr(vars(Mac(Secret(FIXED))))


# --- against PostgreSQL -----------------------------------------------------------


async def test_fixed_mac_auth_password_authorises_the_device(
    dictionary: Dictionary,
    pg_pool: Pool,
    repo: SubscriberRepository,
    devices: DeviceRepository,
    directory: CachedSubscriberDirectory,
) -> None:
    """A hotspot sending its fixed mac-auth-password gets the device's owner's plan,
    recorded as method mac; a wrong fixed password is a PAP login for an unknown user."""
    sid = await _provision(pg_pool, repo, devices)
    events = Events()
    handler = AccessHandler(
        directory=directory,
        events=events,
        renderer=ReplyRenderer(dictionary),
        settings=AuthSettings(methods=METHODS, mac_auth_password=Secret(FIXED)),
        clock=lambda: NOW,
    )
    reply = await handler.handle(_mac_request("0a1b.2c3d.4e5f", FIXED))
    assert (reply.code, reply.reason) == (Code.ACCESS_ACCEPT, "accept")
    assert (events.events[-1].subscriber_id, events.events[-1].method) == (sid, "mac")
    wrong = await handler.handle(_mac_request("0a1b.2c3d.4e5f", FIXED + "!"))
    assert (wrong.reason, events.events[-1].method) == ("unknown_user", "pap")


def test_directory_implements_the_mac_ports(directory: CachedSubscriberDirectory) -> None:
    """The cached directory answers device and blocked-list lookups, also from memory."""
    assert isinstance(directory, MacDirectory) and isinstance(directory, CachedMacDirectory)


@pytest.mark.parametrize("form", FORMS)
async def test_each_notation_authorises_the_one_device(
    dictionary: Dictionary,
    pg_pool: Pool,
    repo: SubscriberRepository,
    devices: DeviceRepository,
    directory: CachedSubscriberDirectory,
    form: str,
) -> None:
    """A device registered once is accepted in every notation, with its owner's plan."""
    sid = await _provision(pg_pool, repo, devices)
    events = Events()
    reply = await _handler(dictionary, directory, events).handle(_mac_request(form, form))
    assert (reply.code, reply.reason) == (Code.ACCESS_ACCEPT, "accept")
    attrs = _attrs(dictionary, reply)
    assert attrs["Session-Timeout"] == 3600
    assert attrs["Mikrotik-Rate-Limit"] == "2000k/10000k"
    [event] = events.events
    assert (event.subscriber_id, event.method, event.reason) == (sid, "mac", "accept")


async def test_cached_device_is_answered_on_the_fast_path(
    dictionary: Dictionary,
    pg_pool: Pool,
    repo: SubscriberRepository,
    devices: DeviceRepository,
    directory: CachedSubscriberDirectory,
) -> None:
    """After one lookup the device and blocked list come from memory, with the pool gone."""
    await _provision(pg_pool, repo, devices)
    handler = _handler(dictionary, directory, Events())
    request = _mac_request("0a:1b:2c:3d:4e:5f", "")
    assert handler.try_handle_now(request) is NOT_READY
    assert (await handler.handle(request)).code == Code.ACCESS_ACCEPT
    pg_pool.terminate()
    fast = handler.try_handle_now(_mac_request("0A1B2C3D4E5F"))
    assert not isinstance(fast, type(NOT_READY))
    assert (fast.code, fast.reason) == (Code.ACCESS_ACCEPT, "accept")


async def test_unknown_mac_is_rejected_as_unknown_device(
    dictionary: Dictionary,
    pg_pool: Pool,
    repo: SubscriberRepository,
    devices: DeviceRepository,
    directory: CachedSubscriberDirectory,
) -> None:
    """A MAC bound to nobody gets Access-Reject with reason unknown_device."""
    await _provision(pg_pool, repo, devices)
    events = Events()
    reply = await _handler(dictionary, directory, events).handle(
        _mac_request("02-00-00-00-00-99", "02-00-00-00-00-99")
    )
    assert (reply.code, reply.reason) == (Code.ACCESS_REJECT, "unknown_device")
    assert events.events[0].subscriber_id is None
    # The negative answer is cached for the fast path too.
    fast = _handler(dictionary, directory, events).try_handle_now(_mac_request("020000000099"))
    assert not isinstance(fast, type(NOT_READY)) and fast.reason == "unknown_device"


async def test_blocked_mac_is_rejected_for_mac_auth_and_for_pap(
    dictionary: Dictionary,
    pg_pool: Pool,
    repo: SubscriberRepository,
    devices: DeviceRepository,
    directory: CachedSubscriberDirectory,
    clock: Clock,
) -> None:
    """A blocked MAC is refused as mac_blocked, as a device and as a PAP Calling-Station-Id."""
    await _provision(pg_pool, repo, devices)
    handler = _handler(dictionary, directory, Events())
    pap = _request(b"cafe-owner", b"pw-cafe-71", calling=b"0a1b.2c3d.4e5f")
    assert (await handler.handle(pap)).code == Code.ACCESS_ACCEPT
    assert await devices.block("0a:1b:2c:3d:4e:5f", reason="stolen")
    assert not await devices.block("0A1B2C3D4E5F")  # already blocked, in another notation
    clock.now += 31  # the blocked list cached by the first request expires
    mac = await handler.handle(_mac_request("0A-1B-2C-3D-4E-5F", "0A-1B-2C-3D-4E-5F"))
    assert (mac.code, mac.reason) == (Code.ACCESS_REJECT, "mac_blocked")
    blocked_pap = await handler.handle(pap)
    assert (blocked_pap.code, blocked_pap.reason) == (Code.ACCESS_REJECT, "mac_blocked")
    other = _request(b"cafe-owner", b"pw-cafe-71", calling=b"02-00-00-00-00-01")
    assert (await handler.handle(other)).code == Code.ACCESS_ACCEPT
    assert await devices.unblock("0a-1b-2c-3d-4e-5f")
    directory.clear()  # what the change hint does in a listening directory
    assert (await handler.handle(pap)).code == Code.ACCESS_ACCEPT


async def test_device_of_a_suspended_subscriber_is_rejected_as_suspended(
    dictionary: Dictionary,
    pg_pool: Pool,
    repo: SubscriberRepository,
    devices: DeviceRepository,
    directory: CachedSubscriberDirectory,
) -> None:
    """The owner's status applies to their devices."""
    await _provision(pg_pool, repo, devices, status="suspended")
    reply = await _handler(dictionary, directory, Events()).handle(
        _mac_request("0A-1B-2C-3D-4E-5F", "0A-1B-2C-3D-4E-5F")
    )
    assert (reply.code, reply.reason) == (Code.ACCESS_REJECT, "suspended")


async def test_subscriber_named_like_a_mac_logs_in_with_pap(
    dictionary: Dictionary,
    pg_pool: Pool,
    repo: SubscriberRepository,
    devices: DeviceRepository,
    directory: CachedSubscriberDirectory,
) -> None:
    """A user name that is a MAC, with a real password, is looked up by name, not device."""
    await _provision(pg_pool, repo, devices)
    await repo.add("0A-1B-2C-3D-4E-50", "pw-named-like-mac", plan="hotspot-10")
    handler = _handler(dictionary, directory, Events())
    ok = await handler.handle(_request(b"0A-1B-2C-3D-4E-50", b"pw-named-like-mac"))
    assert (ok.code, ok.reason) == (Code.ACCESS_ACCEPT, "accept")
    wrong = await handler.handle(_request(b"0A-1B-2C-3D-4E-50", b"pw-wrong"))
    assert wrong.reason == "bad_password"
    # Its own MAC as password is MAC auth, and no device has that MAC.
    as_mac = await handler.handle(_request(b"0A-1B-2C-3D-4E-50", b"0A-1B-2C-3D-4E-50"))
    assert as_mac.reason == "unknown_device"


async def test_removing_a_device_or_its_owner_ends_mac_auth(
    dictionary: Dictionary,
    pg_pool: Pool,
    repo: SubscriberRepository,
    devices: DeviceRepository,
    directory: CachedSubscriberDirectory,
) -> None:
    """An unbound MAC is unknown again; erasing the owner erases their devices."""
    sid = await _provision(pg_pool, repo, devices)
    handler = _handler(dictionary, directory, Events())
    request = _mac_request("0A-1B-2C-3D-4E-5F")
    assert (await handler.handle(request)).code == Code.ACCESS_ACCEPT
    assert [v.mac for v in await devices.list(subscriber="cafe-owner")] == ["0a:1b:2c:3d:4e:5f"]
    assert await devices.remove("0a1b2c3d4e5f")
    assert not await devices.remove("0a1b2c3d4e5f")
    directory.invalidate(sid)  # the change hint
    assert (await handler.handle(request)).reason == "unknown_device"
    await devices.add("0a1b2c3d4e5f", subscriber="cafe-owner")
    assert await repo.remove("cafe-owner")
    async with pg_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM devices") == 0


async def test_a_mac_binds_to_one_subscriber_only(
    pg_pool: Pool, repo: SubscriberRepository, devices: DeviceRepository
) -> None:
    """Binding a bound MAC again, to anyone, is refused; unknown owners and junk too."""
    await _provision(pg_pool, repo, devices)
    await repo.add("second", "pw-second-2", plan=None)
    with pytest.raises(ValueError, match="already bound"):
        await devices.add("0a1b2c3d4e5f", subscriber="second")
    with pytest.raises(LookupError):
        await devices.add("02-00-00-00-00-07", subscriber="nobody")
    with pytest.raises(ValueError, match="not a MAC"):
        await devices.add("0a1b2c3d4e5", subscriber="second")


async def test_raw_mac_is_not_stored_in_clear(
    pg_pool: Pool, repo: SubscriberRepository, devices: DeviceRepository
) -> None:
    """No notation of the device MAC appears in a text dump of devices, lookups or blocks."""
    await _provision(pg_pool, repo, devices)
    await devices.block("02-00-00-00-00-42")
    async with pg_pool.acquire() as conn:
        dump = ""
        for table in ("devices", "subscriber_lookup", "blocked_macs"):
            rows = await conn.fetch(f"SELECT t::text AS row FROM {table} t")
            dump += "\n".join(r["row"] for r in rows).lower()
            assert rows, table
    assert "\\x" in dump  # bytea is dumped as hex, so hex forms would show
    for needle in ("0a1b2c3d4e5f", "0a-1b-2c", "0a:1b:2c", "0a1b.2c3d", "020000000042"):
        assert needle not in dump
    assert await devices.list(subscriber="cafe-owner") != []


async def test_peek_mac_misses_until_looked_up(
    pg_pool: Pool,
    repo: SubscriberRepository,
    devices: DeviceRepository,
    directory: CachedSubscriberDirectory,
    clock: Clock,
) -> None:
    """peek_mac answers only from memory, and the entry expires with the TTL."""
    sid = await _provision(pg_pool, repo, devices)
    mac = bytes.fromhex(DEVICE_HEX)
    assert directory.peek_mac(mac) is MISS and directory.peek_blocked(mac) is MISS
    device = await directory.by_mac(mac)
    assert device is not None and device.subscriber.id == sid and device.raw == "0A-1B-2C-3D-4E-5F"
    assert DEVICE_HEX not in repr(device).lower() and "0A-1B" not in repr(device)
    assert directory.peek_mac(mac) == device
    assert await directory.is_blocked(mac) is False and directory.peek_blocked(mac) is False
    clock.now += 31
    assert directory.peek_mac(mac) is MISS and directory.peek_blocked(mac) is MISS
