"""End to end: the example plan of docs/vendors.md, as radclient sees it, for every profile.

One server; the NAS at 127.0.0.1 is re-created with each ``--vendor`` and the
server re-reads the NAS table on SIGHUP. radclient decodes the reply with
FreeRADIUS's own dictionaries, so each attribute is checked by an
independent peer, with its vendor name, number and value.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.support.peers import RadclientResult, radclient, require_tool
from tests.support.server_proc import ServerProcess, create_database, drop_database

pytestmark = pytest.mark.interop

SECRET = "it-vendors-secret-P4"
USER, PASSWORD = "it-vendor-user-6", "it-vendor-Pw-6"

# docs/vendors.md, "What each profile sends for it" (radclient's spelling).
EXPECTED: dict[str, dict[str, list[str]]] = {
    "generic": {},
    "mikrotik": {
        "Mikrotik-Rate-Limit": ["10000k/50000k 20000k/100000k 8000k/40000k 16/16"],
        "Mikrotik-Address-List": ["paying"],
        "Mikrotik-Delegated-IPv6-Pool": ["pd-a"],
    },
    "cisco": {
        "Cisco-AVPair": [
            "ip:sub-qos-policy-in=ispcare-in-10000k",
            "ip:sub-qos-policy-out=ispcare-out-50000k",
            "ip:addr-pool=pool-a",
        ],
    },
    "cisco-bng": {
        "Cisco-AVPair": [
            "subscriber:sub-qos-policy-in=ispcare-in-10000k",
            "subscriber:sub-qos-policy-out=ispcare-out-50000k",
        ],
    },
    "juniper": {
        "ERX-Qos-Profile-Name": ["ispcare-down-50000k-up-10000k"],
        "ERX-Address-Pool-Name": ["pool-a"],
        "ERX-IPv6-Delegated-Pool-Name": ["pd-a"],
    },
    "huawei": {
        "Huawei-Input-Average-Rate": ["10000000"],
        "Huawei-Input-Peak-Rate": ["20000000"],
        "Huawei-Output-Average-Rate": ["50000000"],
        "Huawei-Output-Peak-Rate": ["100000000"],
    },
    "ubiquiti": {
        "WISPr-Bandwidth-Max-Up": ["10000000"],
        "WISPr-Bandwidth-Max-Down": ["50000000"],
    },
    "chillispot": {
        "ChilliSpot-Bandwidth-Max-Up": ["10000"],
        "ChilliSpot-Bandwidth-Max-Down": ["50000"],
    },
    "accel-ppp": {"Filter-Id": ["50000/10000"]},
}
# Every profile also gets the RFC forms of the pools.
COMMON = {"Framed-Pool": ["pool-a"], "Delegated-IPv6-Prefix-Pool": ["pd-a"]}


@pytest.fixture(scope="module")
def server(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    require_tool("radclient")
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(tmp_path_factory.mktemp("vendors"), dsn, probe_secret=SECRET.encode())
    try:
        srv.setup()
        srv.cli("nas", "add", "bras", "127.0.0.1", "--secret", SECRET, "--vendor", "generic")
        srv.cli(
            "plan", "add", "example",
            "--download", "50M", "--upload", "10M",
            "--burst-download", "100M", "--burst-upload", "20M",
            "--burst-threshold-download", "40M", "--burst-threshold-upload", "8M",
            "--burst-time", "16",
            "--pool", "pool-a", "--ipv6-pool", "pd-a", "--address-list", "paying",
        )  # fmt: skip
        srv.cli(
            "subscriber", "add", USER, "--plan", "example", "--password-stdin",
            input=PASSWORD + "\n",
        )  # fmt: skip
        srv.start()
        yield srv
    finally:
        srv.kill()
        drop_database(pg_admin_dsn, name)


def _login(srv: ServerProcess) -> RadclientResult:
    attrs = f'User-Name = "{USER}", User-Password = "{PASSWORD}", NAS-IP-Address = 127.0.0.1\n'
    return radclient(f"127.0.0.1:{srv.auth_port}", "auth", SECRET, attrs)


def _switch_vendor(srv: ServerProcess, vendor: str) -> RadclientResult:
    """Re-create the NAS with ``vendor``, reload the table, return the first reply it shapes."""
    srv.cli("nas", "remove", "bras")
    srv.cli("nas", "add", "bras", "127.0.0.1", "--secret", SECRET, "--vendor", vendor)
    assert srv.proc is not None
    mark = srv.log_size()
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for_log("nas_reloaded", since=mark, timeout=20)  # the reload has taken effect
    result = _login(srv)
    assert result.code == "Access-Accept", result.output
    sent = {
        name: sorted(values) for name, values in result.attributes.items() if name in _VENDOR_NAMES
    }
    assert sent == {name: sorted(values) for name, values in EXPECTED[vendor].items()}, vendor
    return result


_VENDOR_NAMES = {name for attrs in EXPECTED.values() for name in attrs}


@pytest.mark.parametrize("vendor", list(EXPECTED))
def test_each_profile_sends_the_documented_attributes(server: ServerProcess, vendor: str) -> None:
    result = _switch_vendor(server, vendor)
    for name, values in {**EXPECTED[vendor], **COMMON}.items():
        assert sorted(result.attributes.get(name, [])) == sorted(values), (name, result.output)
