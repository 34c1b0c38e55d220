"""Credential forms (reversible password, NT hash, scrypt) and MAC binding on first login.

Pure parts in memory; storage and the race on a real PostgreSQL with the real
directory and pipeline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ispcare_radius.aaa.methods.chap import chap_response
from ispcare_radius.aaa.methods.credentials import (
    CredentialForm,
    ScryptCost,
    ScryptHash,
    methods_for,
    parse_nt_hash,
    parse_scrypt,
    scrypt_hash,
    unsupported_message,
)
from ispcare_radius.aaa.methods.mscrypto import generate_nt_response, nt_password_hash
from ispcare_radius.aaa.model import AuthEvent, MacBinding, Nas, Plan, Subscriber, SubscriberStatus
from ispcare_radius.aaa.outcome import Outcome
from ispcare_radius.aaa.pipeline import AccessHandler
from ispcare_radius.aaa.ports import MacBinder, Miss
from ispcare_radius.aaa.reply import ReplyRenderer
from ispcare_radius.aaa.request import NOT_READY, Reply, Request
from ispcare_radius.cli.config import ConfigError, load_config
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.protocol.authenticator import hide_password, random_authenticator
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.protocol.dictionary import Dictionary
from ispcare_radius.protocol.packet import build_packet, encode_attributes, parse
from ispcare_radius.store.db import Pool
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.subscribers import SubscriberRepository
from tests.support.peers import require_tool
from tests.support.server_proc import ServerProcess, create_database, drop_database

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"credentials-unit-secret"
NOW = 1_800_000_000.0
NAS = Nas(5, "bras-c", ipaddress.ip_network("192.0.2.5/32"), Secret(SECRET))
PLAN = Plan(id=1, name="p", session_timeout=3600)
CHEAP = ScryptCost(n=16, r=1, p=1)
PASSWORD = "Nt-only-Pw-9"
NT_HEX = nt_password_hash(PASSWORD).hex()
AUTH_CHALLENGE = bytes.fromhex("5b5d7c7d7b3f2f3e3c2c602132262628")
PEER_CHALLENGE = bytes.fromhex("21402324255e262a28295f2b3a337c7e")
V1_CHALLENGE = bytes.fromhex("102db5df085d3041")
MAC_A, MAC_B = "02-00-5e-10-00-0a", "02-00-5e-10-00-0b"


@pytest.fixture(scope="module")
def dictionary() -> Dictionary:
    d, warnings = load_dictionary([ROOT / "dictionaries" / "dictionary"])
    assert warnings == []
    return d


class Events:
    def __init__(self) -> None:
        self.events: list[AuthEvent] = []

    def submit(self, event: AuthEvent) -> None:
        self.events.append(event)


class Directory:
    """An in-memory directory port that also answers from memory."""

    def __init__(self, subs: dict[str, Subscriber]) -> None:
        self.subs = subs

    async def by_user_name(self, user_name: str) -> Subscriber | None:
        return self.subs.get(user_name)

    def peek(self, user_name: str) -> Subscriber | Miss | None:
        return self.subs.get(user_name)


def _sub(**kw: object) -> Subscriber:
    base: dict[str, object] = {
        "id": 21,
        "status": SubscriberStatus.ACTIVE,
        "plan": PLAN,
        "password": None,
    }
    base.update(kw)
    return Subscriber(**base)  # type: ignore[arg-type]


def _handler(
    dictionary: Dictionary, directory: object, events: Events | None = None
) -> AccessHandler:
    return AccessHandler(
        directory=directory,  # type: ignore[arg-type]
        events=events or Events(),
        renderer=ReplyRenderer(dictionary),
        clock=lambda: NOW,
    )


def _request(
    dictionary: Dictionary,
    user: str,
    attrs: list[tuple[str, bytes]],
    *,
    auth: bytes | None = None,
    calling: str | None = None,
    raw: tuple[tuple[int, bytes], ...] = (),
) -> Request:
    auth = auth or random_authenticator()
    body = encode_attributes(((1, user.encode()), *raw))
    body += b"".join(dictionary.encode(name, value) for name, value in attrs)
    if calling is not None:
        body += dictionary.encode("Calling-Station-Id", calling)
    return Request(parse(build_packet(1, 9, auth, body)), NAS, ("192.0.2.5", 1812), 0.0, None)


def _pap(dictionary: Dictionary, user: str, password: str, calling: str | None = None) -> Request:
    auth = random_authenticator()
    hidden = hide_password(password.encode(), SECRET, auth)
    return _request(dictionary, user, [], auth=auth, calling=calling, raw=((2, hidden),))


def _chap(dictionary: Dictionary, user: str, password: str) -> Request:
    challenge = b"chap-challenge-16"
    value = bytes((7,)) + chap_response(7, password.encode(), challenge)
    return _request(dictionary, user, [("CHAP-Password", value), ("CHAP-Challenge", challenge)])


def _v2(dictionary: Dictionary, user: str, password: str) -> Request:
    nt = generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, user.encode(), password)
    response = bytes((0x2A, 0)) + PEER_CHALLENGE + bytes(8) + nt
    attrs = [("MS-CHAP-Challenge", AUTH_CHALLENGE), ("MS-CHAP2-Response", response)]
    return _request(dictionary, user, attrs)


def _v1(dictionary: Dictionary, user: str, password: str) -> Request:
    from ispcare_radius.aaa.methods.mscrypto import challenge_response

    nt = challenge_response(V1_CHALLENGE, nt_password_hash(password))
    response = bytes((0x17, 1)) + bytes(24) + nt
    attrs = [("MS-CHAP-Challenge", V1_CHALLENGE), ("MS-CHAP-Response", response)]
    return _request(dictionary, user, attrs)


def _decoded(dictionary: Dictionary, request: Request, reply: Reply) -> dict[str, list[object]]:
    packet = parse(build_packet(2, 9, bytes(16), reply.attributes))
    out: dict[str, list[object]] = {}
    for defn, value, _ in dictionary.decode(
        packet, secret=SECRET, request_authenticator=request.packet.authenticator
    ):
        out.setdefault(defn.name, []).append(value)
    return out


# --- scrypt and NT hash values -----------------------------------------------


def test_scrypt_parameters_reach_the_kdf_as_rfc_7914_specifies() -> None:
    """RFC 7914 section 12, second vector (N=1024, r=8, p=16, salt "NaCl") verifies."""
    digest = bytes.fromhex(
        "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
        "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"
    )
    stored = ScryptHash(ScryptCost(n=1024, r=8, p=16), b"NaCl", digest)
    assert stored.matches(b"password")
    assert not stored.matches(b"passwore")
    assert stored.encode().startswith("$scrypt$n=1024,r=8,p=16$TmFDbA$")


def test_scrypt_string_is_self_describing_and_salted() -> None:
    """The stored text names its cost, salt and hash; two hashes of one password differ."""
    one, two = scrypt_hash(b"pw", CHEAP), scrypt_hash(b"pw", CHEAP)
    assert re.fullmatch(r"\$scrypt\$n=16,r=1,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}", one)
    assert one != two
    assert parse_scrypt(one).matches(b"pw") and parse_scrypt(two).matches(b"pw")
    assert not parse_scrypt(one).matches(b"pW")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
        "$scrypt$n=15,r=1,p=1$c2FsdHNhbHQ$" + "A" * 43,  # n not a power of 2
        "$scrypt$n=16,r=1,p=1$c2FsdA$" + "A" * 43,  # salt too short
        "$scrypt$n=16,r=1,p=1$c2FsdHNhbHQ$AAAA",  # digest too short
        "$scrypt$n=16,r=1,p=1$c2Fs!HNhbHQ$" + "A" * 43,
        "$scrypt$n=2097152,r=8,p=1$c2FsdHNhbHQ$" + "A" * 43,  # beyond the bound
    ],
)
def test_malformed_scrypt_strings_are_refused_without_echoing_them(text: str) -> None:
    """A bad hash string is a ValueError whose message does not contain the string."""
    with pytest.raises(ValueError) as info:
        parse_scrypt(text)
    assert text == "" or text not in str(info.value)


def test_nt_hash_hex_is_checked() -> None:
    """32 hex digits (0x allowed) parse to 16 bytes; anything else is refused."""
    assert parse_nt_hash(NT_HEX.upper()) == nt_password_hash(PASSWORD)
    assert parse_nt_hash("0x" + NT_HEX) == nt_password_hash(PASSWORD)
    for bad in ("", NT_HEX[:-2], NT_HEX + "00", "zz" + NT_HEX[2:]):
        with pytest.raises(ValueError, match="32 hex digits"):
            parse_nt_hash(bad)


def test_methods_per_credential_form() -> None:
    """NT hash: PAP and both MS-CHAPs; scrypt: PAP only; the password: all four."""
    assert methods_for([CredentialForm.PASSWORD]) == ("pap", "chap", "mschap", "mschapv2")
    assert methods_for([CredentialForm.NT_HASH]) == ("pap", "mschap", "mschapv2")
    assert methods_for([CredentialForm.SLOW_HASH]) == ("pap",)
    assert methods_for([]) == ()
    nt_only = frozenset({CredentialForm.NT_HASH})
    assert unsupported_message("chap", nt_only) == (
        "CHAP needs a stored password; this account holds only an NT hash"
    )
    assert unsupported_message("mschapv2", nt_only) is None
    assert unsupported_message("chap", frozenset()) is None  # plain wrong password


# --- the pipeline against each form ----------------------------------------


async def test_nt_hash_only_account_serves_pap_and_both_mschaps(dictionary: Dictionary) -> None:
    """With only the NT hash stored, PAP, MS-CHAPv1 and MS-CHAPv2 accept the right
    password and reject a wrong one; v1's MPPE keys carry a zero LM part."""
    sub = _sub(nt_hash=Secret(nt_password_hash(PASSWORD)))
    handler = _handler(dictionary, Directory({"nt": sub}))
    for build in (_pap, _v1, _v2):
        good = await handler.handle(build(dictionary, "nt", PASSWORD))
        assert good.code == Code.ACCESS_ACCEPT, (build.__name__, good.reason)
        bad = await handler.handle(build(dictionary, "nt", PASSWORD + "x"))
        assert (bad.code, bad.reason) == (Code.ACCESS_REJECT, "bad_password"), build.__name__
    request = _v1(dictionary, "nt", PASSWORD)
    keys = _decoded(dictionary, request, await handler.handle(request))["MS-CHAP-MPPE-Keys"]
    assert len(keys) == 1 and isinstance(keys[0], bytes) and keys[0][:8] == bytes(8)


async def test_chap_against_an_nt_hash_is_rejected_with_the_reason(dictionary: Dictionary) -> None:
    """CHAP for an NT-hash-only account: reason method_unsupported_by_credential and a
    Reply-Message saying why; the event records the reason too."""
    events = Events()
    sub = _sub(nt_hash=Secret(nt_password_hash(PASSWORD)))
    request = _chap(dictionary, "nt", PASSWORD)
    reply = await _handler(dictionary, Directory({"nt": sub}), events).handle(request)
    assert (reply.code, reply.reason) == (Code.ACCESS_REJECT, "method_unsupported_by_credential")
    assert _decoded(dictionary, request, reply)["Reply-Message"] == [
        "CHAP needs a stored password; this account holds only an NT hash"
    ]
    assert events.events[-1].reason == Outcome.METHOD_UNSUPPORTED_BY_CREDENTIAL.value


async def test_slow_hash_account_serves_pap_off_the_fast_path(dictionary: Dictionary) -> None:
    """PAP against a scrypt-only account is never answered on the synchronous path
    (the hash runs in a thread) and accepts only the right password."""
    sub = _sub(slow_hash=Secret(scrypt_hash(PASSWORD.encode(), CHEAP)))
    handler = _handler(dictionary, Directory({"slow": sub}))
    request = _pap(dictionary, "slow", PASSWORD)
    assert handler.try_handle_now(request) is NOT_READY
    assert (await handler.handle(request)).code == Code.ACCESS_ACCEPT
    wrong = await handler.handle(_pap(dictionary, "slow", "not-" + PASSWORD))
    assert wrong.reason == "bad_password"


@pytest.mark.parametrize("build", [_chap, _v1, _v2])
async def test_slow_hash_account_refuses_challenge_methods_with_the_reason(
    dictionary: Dictionary, build: object
) -> None:
    """CHAP and both MS-CHAPs cannot use a scrypt hash: the reject says so (and the
    MS-CHAP ones still carry MS-CHAP-Error)."""
    sub = _sub(slow_hash=Secret(scrypt_hash(PASSWORD.encode(), CHEAP)))
    assert callable(build)
    request = build(dictionary, "slow", PASSWORD)
    reply = await _handler(dictionary, Directory({"slow": sub})).handle(request)
    assert reply.reason == "method_unsupported_by_credential"
    decoded = _decoded(dictionary, request, reply)
    (message,) = decoded["Reply-Message"]
    assert isinstance(message, str)
    assert message.endswith("this account holds only a slow (scrypt) hash")
    assert ("MS-CHAP-Error" in decoded) == (build is not _chap)


async def test_reversible_password_still_serves_every_method(dictionary: Dictionary) -> None:
    """The reversible form is unchanged: PAP, CHAP, v1 and v2 all accept."""
    handler = _handler(dictionary, Directory({"pw": _sub(password=Secret(PASSWORD))}))
    for build in (_pap, _chap, _v1, _v2):
        reply = await handler.handle(build(dictionary, "pw", PASSWORD))
        assert reply.code == Code.ACCESS_ACCEPT, (build.__name__, reply.reason)


# --- storage: sealed forms, what show reports, replacing credentials --------


@pytest.fixture
def repo(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> SubscriberRepository:
    return SubscriberRepository(pg_pool, system_keys, master_keys, data_keys)


@pytest.fixture
def directory(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys
) -> CachedSubscriberDirectory:
    # Its own key cache, as in the server process.
    return CachedSubscriberDirectory(
        pg_pool, system_keys, DataKeyCache(master_keys), poll_interval=None
    )


async def test_credential_forms_are_sealed_and_read_back(
    repo: SubscriberRepository, directory: CachedSubscriberDirectory, pg_pool: Pool
) -> None:
    """NT hash and scrypt text are stored only encrypted, decrypt for the directory,
    and the view says which methods work."""
    slow = scrypt_hash(PASSWORD.encode(), CHEAP)
    await repo.add("nt-user", None, plan=None, nt_hash=NT_HEX)
    await repo.add("slow-user", None, plan=None, password_hash=slow)
    raw = await pg_pool.fetch("SELECT nt_hash_enc, slow_hash_enc FROM subscribers ORDER BY id")
    blobs = b"".join(bytes(v) for r in raw for v in r.values() if v is not None)
    assert nt_password_hash(PASSWORD) not in blobs and slow.encode() not in blobs
    nt_sub = await directory.by_user_name("nt-user")
    slow_sub = await directory.by_user_name("slow-user")
    assert nt_sub is not None and slow_sub is not None
    assert nt_sub.nt_hash == Secret(nt_password_hash(PASSWORD)) and nt_sub.password is None
    assert slow_sub.slow_hash == Secret(slow) and slow_sub.nt_hash is None
    view = await repo.get("nt-user")
    assert view is not None
    assert (view.has_password, view.has_nt_hash, view.has_slow_hash) == (False, True, False)
    assert view.methods == ("pap", "mschap", "mschapv2")
    slow_view = await repo.get("slow-user")
    assert slow_view is not None and slow_view.methods == ("pap",)


async def test_giving_one_credential_replaces_all_of_them(
    repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """A new password clears a stored NT hash (an old password's hash must not keep
    working), and a new NT hash clears the reversible password."""
    await repo.add("u", "old-password", plan=None, nt_hash=NT_HEX)
    assert await repo.set("u", password="new-password")
    view = await repo.get("u")
    assert view is not None and (view.has_password, view.has_nt_hash) == (True, False)
    assert await repo.set("u", nt_hash=NT_HEX)
    view = await repo.get("u")
    assert view is not None and (view.has_password, view.has_nt_hash) == (False, True)
    detail = await pg_pool.fetchval(
        "SELECT detail FROM audit_log WHERE action = 'subscriber.set' ORDER BY time DESC LIMIT 1"
    )
    assert detail == {"fields": ["nt_hash", "password"]}
    with pytest.raises(ValueError, match="32 hex digits"):
        await repo.set("u", nt_hash="not-hex")
    with pytest.raises(ValueError, match=re.escape("$scrypt$")):
        await repo.add("v", None, plan=None, password_hash="plain-text")


# --- MAC binding -----------------------------------------------------------


async def test_mac_binding_stays_consistent_with_the_lock(repo: SubscriberRepository) -> None:
    """A lock implies 'lock'; clearing it turns 'lock' off; 'first_login' keeps its
    mode; 'lock' without a MAC and 'off' with one are refused."""
    await repo.add("a", "pw", plan=None, mac_lock=MAC_A)
    view = await repo.get("a")
    assert view is not None and view.mac_binding is MacBinding.LOCK
    assert await repo.set("a", mac_lock=None)
    view = await repo.get("a")
    assert view is not None and (view.mac_binding, view.mac_lock) == (MacBinding.OFF, None)
    with pytest.raises(ValueError, match="needs a MAC lock"):
        await repo.set("a", mac_binding="lock")
    await repo.add("f", "pw", plan=None, mac_binding="first_login")
    assert await repo.set("f", mac_lock=MAC_B)
    assert await repo.set("f", mac_lock=None)
    view = await repo.get("f")
    assert view is not None and view.mac_binding is MacBinding.FIRST_LOGIN
    with pytest.raises(ValueError, match="keeps no MAC lock"):
        await repo.add("g", "pw", plan=None, mac_lock=MAC_B, mac_binding="off")
    assert await repo.set("f", mac_lock=MAC_B, mac_binding="lock")
    assert await repo.set("f", mac_binding="off")  # off drops the lock
    view = await repo.get("f")
    assert view is not None and (view.mac_binding, view.mac_lock) == (MacBinding.OFF, None)


def _store_handler(
    dictionary: Dictionary, directory: CachedSubscriberDirectory, events: Events | None = None
) -> AccessHandler:
    return _handler(dictionary, directory, events)


async def test_first_login_binds_its_mac_and_locks_out_others(
    repo: SubscriberRepository, directory: CachedSubscriberDirectory, dictionary: Dictionary
) -> None:
    """The first accepted login's Calling-Station-Id becomes the lock: that MAC gets
    in again (then on the synchronous path), another MAC is a lock mismatch."""
    await repo.add("fl", PASSWORD, plan=None, mac_binding="first_login")
    handler = _store_handler(dictionary, directory)
    first = _pap(dictionary, "fl", PASSWORD, calling=MAC_A)
    assert handler.try_handle_now(first) is NOT_READY  # binding is a write
    assert (await handler.handle(first)).code == Code.ACCESS_ACCEPT
    view = await repo.get("fl")
    assert view is not None and view.mac_lock == MAC_A.replace("-", ":")
    other = await handler.handle(_pap(dictionary, "fl", PASSWORD, calling=MAC_B))
    assert other.reason == "mac_lock_mismatch"
    again = handler.try_handle_now(_pap(dictionary, "fl", PASSWORD, calling=MAC_A))
    assert isinstance(again, Reply) and again.code == Code.ACCESS_ACCEPT
    # An operator clears the lock: the next login binds again.
    assert await repo.set("fl", mac_lock=None)
    directory.invalidate((await repo.get("fl") or view).id)
    assert (await handler.handle(_pap(dictionary, "fl", PASSWORD, calling=MAC_B))).reason == (
        "accept"
    )
    view = await repo.get("fl")
    assert view is not None and view.mac_lock == MAC_B.replace("-", ":")


async def test_failed_or_macless_first_logins_do_not_bind(
    repo: SubscriberRepository, directory: CachedSubscriberDirectory, dictionary: Dictionary
) -> None:
    """A wrong password binds nothing; a login without Calling-Station-Id cannot bind
    and is refused."""
    await repo.add("fl2", PASSWORD, plan=None, mac_binding="first_login")
    handler = _store_handler(dictionary, directory)
    wrong = await handler.handle(_pap(dictionary, "fl2", "nope", calling=MAC_A))
    assert wrong.reason == "bad_password"
    no_mac = await handler.handle(_pap(dictionary, "fl2", PASSWORD))
    assert no_mac.reason == "mac_lock_mismatch"
    view = await repo.get("fl2")
    assert view is not None and view.mac_lock is None


async def test_concurrent_first_logins_bind_exactly_one_mac(
    repo: SubscriberRepository,
    pg_pool: Pool,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
) -> None:
    """Ten directories (as ten server processes) bind ten different MACs at once:
    exactly one wins, and the stored lock is the winner's."""
    sid = await repo.add("race", PASSWORD, plan=None, mac_binding="first_login")
    macs = [bytes.fromhex(f"02005e2000{i:02x}") for i in range(10)]
    dirs = [
        CachedSubscriberDirectory(pg_pool, system_keys, DataKeyCache(master_keys)) for _ in macs
    ]
    assert all(isinstance(d, MacBinder) for d in dirs)
    results = await asyncio.gather(
        *(d.bind_first_mac(sid, m) for d, m in zip(dirs, macs, strict=True))
    )
    assert sum(results) == 1
    winner = macs[results.index(True)]
    view = await repo.get("race")
    assert view is not None and view.mac_lock == ":".join(f"{b:02x}" for b in winner)
    # The same MAC binding again reports success; any other fails.
    assert await dirs[0].bind_first_mac(sid, winner)
    assert not await dirs[0].bind_first_mac(sid, macs[(results.index(True) + 1) % 10])


async def test_first_login_mac_already_locked_elsewhere_is_not_bound(
    repo: SubscriberRepository, directory: CachedSubscriberDirectory
) -> None:
    """A MAC that is another subscriber's lock cannot become this one's: the bind
    rolls back and the subscriber stays unbound."""
    await repo.add("holder", "pw", plan=None, mac_lock=MAC_A)
    sid = await repo.add("late", "pw", plan=None, mac_binding="first_login")
    assert not await directory.bind_first_mac(sid, bytes.fromhex(MAC_A.replace("-", "")))
    view = await repo.get("late")
    assert view is not None and view.mac_lock is None


# --- configuration ---------------------------------------------------------


def test_config_reads_scrypt_cost_and_keeps_the_mac_auth_password_secret(
    tmp_path: Path,
) -> None:
    """[auth] scrypt_n/r/p set the hashing cost (validated); mac_auth_password
    becomes a Secret that no repr shows."""
    path = tmp_path / "c.toml"
    path.write_text(
        '[auth]\nscrypt_n = 1024\nscrypt_r = 4\nscrypt_p = 2\nmac_auth_password = "fixed-Pw-77"\n'
    )
    config = load_config(path, env={"ISPCARE_STATE_DIR": str(tmp_path)})
    assert config.password_hash == ScryptCost(n=1024, r=4, p=2)
    assert config.auth.mac_auth_password == Secret("fixed-Pw-77")
    assert "fixed-Pw-77" not in repr(config)
    assert load_config(None, env={"ISPCARE_STATE_DIR": str(tmp_path)}).password_hash == (
        ScryptCost()
    )
    path.write_text("[auth]\nscrypt_n = 1000\n")
    with pytest.raises(ConfigError, match="power of 2"):
        load_config(path, env={"ISPCARE_STATE_DIR": str(tmp_path)})


# --- end to end: the real server and FreeRADIUS's radtest ----------------------

IT_SECRET = "it-credentials-secret-K2"
IT_NT_USER, IT_SLOW_USER = "it-nt-only-user", "it-scrypt-user"


@pytest.fixture(scope="module")
def server(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    require_tool("radtest")
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(
        tmp_path_factory.mktemp("credentials"),
        dsn,
        probe_secret=IT_SECRET.encode(),
        # Cheap scrypt for the test; the stored string carries these values.
        extra_config="[auth]\nscrypt_n = 16\nscrypt_r = 1\nscrypt_p = 1\n",
    )
    try:
        srv.setup()
        srv.cli("nas", "add", "bras-c", "127.0.0.1", "--secret", IT_SECRET)
        srv.cli("subscriber", "add", IT_NT_USER, "--nt-hash", NT_HEX)
        srv.cli(
            "subscriber", "add", IT_SLOW_USER, "--password-hash", "scrypt", "--password-stdin",
            input=PASSWORD + "\n",
        )  # fmt: skip
        srv.start()
        yield srv
    finally:
        srv.kill()
        drop_database(pg_admin_dsn, name)


def _radtest(srv: ServerProcess, kind: str, user: str, password: str) -> str:
    proc = subprocess.run(
        [require_tool("radtest"), "-t", kind, user, password,
         f"127.0.0.1:{srv.auth_port}", "0", IT_SECRET],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return proc.stdout + proc.stderr


@pytest.mark.interop
def test_radtest_chap_against_nt_hash_only_is_rejected_with_the_reason(
    server: ServerProcess,
) -> None:
    """``radtest -t chap`` for an NT-hash-only subscriber: Access-Reject whose
    Reply-Message says CHAP needs a stored password."""
    out = _radtest(server, "chap", IT_NT_USER, PASSWORD)
    assert "Received Access-Reject" in out, out
    assert (
        'Reply-Message = "CHAP needs a stored password; this account holds only an NT hash"' in out
    ), out


@pytest.mark.interop
def test_radtest_mschap_and_pap_against_nt_hash_only_accept(server: ServerProcess) -> None:
    """``radtest -t mschap`` (v1) and ``-t pap`` accept the NT-hash-only subscriber;
    a wrong password is still rejected with E=691."""
    for kind in ("mschap", "pap"):
        out = _radtest(server, kind, IT_NT_USER, PASSWORD)
        assert "Received Access-Accept" in out, (kind, out)
    out = _radtest(server, "mschap", IT_NT_USER, "not-" + PASSWORD)
    assert "Received Access-Reject" in out and "E=691" in out, out


@pytest.mark.interop
def test_radtest_against_a_scrypt_subscriber(server: ServerProcess) -> None:
    """A subscriber added with ``--password-hash scrypt`` logs in with PAP only;
    MS-CHAP gets the reason."""
    assert "Received Access-Accept" in _radtest(server, "pap", IT_SLOW_USER, PASSWORD)
    assert "Received Access-Reject" in _radtest(server, "pap", IT_SLOW_USER, PASSWORD + "!")
    out = _radtest(server, "mschap", IT_SLOW_USER, PASSWORD)
    assert "Received Access-Reject" in out and "holds only a slow (scrypt) hash" in out, out


@pytest.mark.interop
def test_subscriber_show_says_which_methods_work(server: ServerProcess) -> None:
    """``subscriber show`` lists the working methods and why the others cannot work;
    it never prints the hash."""
    out = server.cli("subscriber", "show", IT_NT_USER)
    assert "methods: pap, mschap, mschapv2" in out, out
    assert "not chap: CHAP needs a stored password; this account holds only an NT hash" in out
    assert NT_HEX not in out.lower()
    out = server.cli("subscriber", "show", IT_SLOW_USER)
    assert "methods: pap\n" in out and "not mschapv2: MS-CHAPv2 needs" in out, out
    assert "$scrypt$" not in out
