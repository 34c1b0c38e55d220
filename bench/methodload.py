#!/usr/bin/env python3
"""Side-by-side load for PAP, CHAP and MS-CHAPv2 Access-Requests.

The shared harness's load generator speaks PAP only; this one builds the
requests with our own codec (CHAP with a CHAP-Challenge, MS-CHAPv2 with an
NT-Response computed for passN), keeps N requests outstanding, checks every
Response Authenticator, and measures the CPU of the watched server processes
per request. ``--compare`` runs FreeRADIUS (``servers.sh pids``) and ours back
to back, alternating the order each round, and prints median ratios.

  bench/methodload.py --compare --kinds pap,chap,mschapv2 --rounds 5 \\
      --ours-watch tree:<server pid> --ours-watch tree:<postmaster pid>
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ispcare_radius.aaa.methods.chap import chap_response
from ispcare_radius.aaa.methods.mscrypto import generate_nt_response
from ispcare_radius.protocol.authenticator import (
    build_request,
    hide_password,
    random_authenticator,
    verify_response,
)
from ispcare_radius.protocol.packet import encode_attributes, parse

MICROSOFT = 311


def _vsa(vtype: int, value: bytes) -> tuple[int, bytes]:
    return 26, MICROSOFT.to_bytes(4, "big") + bytes((vtype, len(value) + 2)) + value


def make_request(kind: str, user: str, password: str, secret: bytes, ident: int) -> bytes:
    """One Access-Request of ``kind`` for ``user``, with a Message-Authenticator."""
    auth = random_authenticator()
    attrs: list[tuple[int, bytes]] = [(1, user.encode()), (4, bytes((127, 0, 0, 1)))]
    if kind == "pap":
        attrs.append((2, hide_password(password.encode(), secret, auth)))
    elif kind == "chap":
        challenge = os.urandom(16)
        chap_id = ident
        attrs.append((3, bytes((chap_id,)) + chap_response(chap_id, password.encode(), challenge)))
        attrs.append((60, challenge))
    elif kind == "mschapv2":
        auth_challenge, peer_challenge = os.urandom(16), os.urandom(16)
        nt = generate_nt_response(auth_challenge, peer_challenge, user.encode(), password)
        response = bytes((ident, 0)) + peer_challenge + bytes(8) + nt
        attrs += [_vsa(11, auth_challenge), _vsa(25, response)]
    else:
        raise SystemExit(f"methodload: unknown kind {kind}")
    return build_request(
        1, ident, encode_attributes(attrs), secret, message_authenticator=True, authenticator=auth
    )


def _tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def cpu_seconds(watch: list[str]) -> float:
    """utime+stime of every watched process (``PID`` or ``tree:PID``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for spec in watch:
        pids = _tree_pids(int(spec[5:])) if spec.startswith("tree:") else [int(spec)]
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except OSError:
                continue
    return total


def run(
    kind: str,
    host: str,
    port: int,
    secret: bytes,
    *,
    users: int,
    count: int,
    parallel: int,
    seed: int,
    watch: list[str],
) -> dict[str, object]:
    """Send ``count`` requests with ``parallel`` outstanding; figures as a dict."""
    rng = random.Random(seed)
    picks = [rng.randint(1, users) for _ in range(count)]
    socks = [
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(max(1, parallel // 128))
    ]
    for s in socks:
        s.connect((host, port))
        s.setblocking(False)
    free = [(si, i) for i in range(256) for si in range(len(socks))]
    rng.shuffle(free)
    pending: dict[tuple[int, int], tuple[float, bytes]] = {}
    counts = {"accept": 0, "reject": 0, "lost": 0}
    latencies: list[float] = []
    sent = 0
    cpu0 = cpu_seconds(watch)
    t0 = time.monotonic()
    while sent < count or pending:
        while sent < count and len(pending) < parallel and free:
            si, ident = free.pop()
            n = picks[sent]
            data = make_request(kind, f"user{n}", f"pass{n}", secret, ident)
            socks[si].send(data)
            pending[(si, ident)] = (time.monotonic(), data[4:20])
            sent += 1
        ready, _, _ = select.select(socks, [], [], 0.5)
        now = time.monotonic()
        for si, s in enumerate(socks):
            if s not in ready:
                continue
            while True:
                try:
                    reply = s.recv(4096)
                except BlockingIOError:
                    break
                packet = parse(reply)
                key = (si, packet.identifier)
                entry = pending.pop(key, None)
                if entry is None or not verify_response(packet, entry[1], secret):
                    continue
                latencies.append(now - entry[0])
                counts["accept" if packet.code == 2 else "reject"] += 1
                free.insert(0, key)
        for key, (started, _) in list(pending.items()):
            if now - started > 3.0:
                del pending[key]
                counts["lost"] += 1
                free.insert(0, key)
    wall = time.monotonic() - t0
    cpu = cpu_seconds(watch) - cpu0
    latencies.sort()
    done = counts["accept"] + counts["reject"]
    return {
        "kind": kind,
        "rps": round(done / wall, 1),
        "counts": counts,
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
        "cpu_us": round(cpu / max(done, 1) * 1e6, 1) if watch else None,
    }


def _ref_watch(bench_dir: Path) -> list[str]:
    out = subprocess.run(
        [str(bench_dir / "servers.sh"), "pids"], capture_output=True, text=True, check=True
    ).stdout
    return [f"tree:{line.split('=', 1)[1].split(':')[-1]}" for line in out.split() if "=" in line]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--kinds", default="pap,chap,mschapv2")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1812)
    ap.add_argument("--ref-port", type=int, default=11812)
    ap.add_argument("--secret", default="testing123")
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--count", type=int, default=20_000)
    ap.add_argument("--parallel", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ours-watch", action="append", default=[])
    ap.add_argument("--compare", action="store_true")
    ap.add_argument(
        "--bench-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "bench")
    )
    a = ap.parse_args()
    secret = a.secret.encode()
    if not a.compare:
        for kind in a.kinds.split(","):
            print(
                json.dumps(
                    run(
                        kind,
                        a.host,
                        a.port,
                        secret,
                        users=a.users,
                        count=a.count,
                        parallel=a.parallel,
                        seed=1,
                        watch=a.ours_watch,
                    )
                )
            )
        return
    ref_watch = _ref_watch(Path(a.bench_dir))
    for kind in a.kinds.split(","):
        ratios, cpu_ratios = [], []
        for rnd in range(1, a.rounds + 1):
            order = ["ref", "ours"] if rnd % 2 else ["ours", "ref"]
            res = {}
            for side in order:
                port, watch = (a.ref_port, ref_watch) if side == "ref" else (a.port, a.ours_watch)
                res[side] = run(
                    kind,
                    a.host,
                    port,
                    secret,
                    users=a.users,
                    count=a.count,
                    parallel=a.parallel,
                    seed=rnd,
                    watch=watch,
                )
            ratio = res["ours"]["rps"] / res["ref"]["rps"]  # type: ignore[operator]
            ratios.append(ratio)
            cpu_ratio = None
            if res["ours"]["cpu_us"] and res["ref"]["cpu_us"]:
                cpu_ratio = res["ours"]["cpu_us"] / res["ref"]["cpu_us"]  # type: ignore[operator]
                cpu_ratios.append(cpu_ratio)
            print(
                f"{kind} round {rnd}: ours {res['ours']} | freeradius {res['ref']} | "
                f"throughput ratio {ratio:.2f} | cpu/request ratio "
                f"{'-' if cpu_ratio is None else f'{cpu_ratio:.2f}'}",
                flush=True,
            )
        cpu_med = f"{statistics.median(cpu_ratios):.2f}" if cpu_ratios else "-"
        print(
            f"{kind}: median throughput ratio ours/freeradius = "
            f"{statistics.median(ratios):.2f}; cpu per request ratio = {cpu_med}",
            flush=True,
        )


if __name__ == "__main__":
    main()
