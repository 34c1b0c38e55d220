"""Real RADIUS peers for interop tests: FreeRADIUS's radclient, and a process runner.

A missing peer skips the test, unless ISPCARE_REQUIRE_INTEROP=1 (as in CI),
where it fails it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

import pytest


def require_tool(name: str) -> str:
    """The path of ``name``, or skip (fail when interop is required)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed (Debian package freeradius-utils)"
        if os.environ.get("ISPCARE_REQUIRE_INTEROP") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class RadclientResult:
    returncode: int
    output: str
    code: str | None  # "Access-Accept", ... or None when no reply came
    attributes: dict[str, list[str]] = field(default_factory=dict)


_RECEIVED = re.compile(r"Received (\S+) Id \d+ from")
_ATTR = re.compile(r"^\s+([A-Za-z0-9-]+) = (.*)$")


def radclient(
    server: str,
    command: str,
    secret: str,
    attributes: str,
    *,
    retries: int = 1,
    timeout: float = 1.0,
    ipv6: bool = False,
) -> RadclientResult:
    """Send one request with radclient and parse what came back."""
    exe = require_tool("radclient")
    args = [exe, "-x", "-r", str(retries), "-t", str(timeout)]
    if ipv6:
        args.append("-6")
    args += [server, command, secret]
    proc = subprocess.run(
        args, input=attributes, capture_output=True, text=True, timeout=60, check=False
    )
    out = proc.stdout + proc.stderr
    code = None
    attrs: dict[str, list[str]] = {}
    in_reply = False
    for line in out.splitlines():
        m = _RECEIVED.search(line)
        if m:
            code = m.group(1)
            in_reply = True
            continue
        if in_reply:
            a = _ATTR.match(line)
            if a:
                attrs.setdefault(a.group(1), []).append(a.group(2).strip().strip('"'))
            elif line and not line.startswith(("\t", " ")):
                in_reply = False
    return RadclientResult(proc.returncode, out, code, attrs)
