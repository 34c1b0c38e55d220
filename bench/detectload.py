"""What suspicious-login detection costs: auth CPU per request with it on and off.

One database, one subscriber set, the shared load generator
(``../shared/bench/radload.py``); the server is restarted for each round with
``[detect] enabled`` on or off, alternating. After a warm-up run (the
subscriber cache, and with detection on the detector's per-subscriber keys),
``--runs`` runs are measured: the CPU time of the server process, and of the
PostgreSQL server (as the shared harness counts it), read from /proc around
them, per answered request. Prints each round, the medians of each mode and
their ratio, and the median of the rounds' own on/off ratios (a round's two
runs are back to back, so the machine's drift cancels out of it):

    .venv/bin/python bench/detectload.py [--rounds 7] [--users 20000] [--count 20000] [--runs 3]
                                         [--located]

``--located`` gives the NAS a location (a fixed-line POP), as an ISP with
``nas_locations`` has: every login then has a place, and the location rules
(new country, impossible travel) run on each.

Uses $ISPCARE_BENCH_DSN (an admin DSN; a scratch database is created and
dropped), default postgresql://postgres@127.0.0.1:5432/postgres.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.server_proc import (  # noqa: E402
    ServerProcess,
    create_database,
    drop_database,
)

SECRET = "testing123"


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` so far."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU of ``pid``, its live children, and the children it has reaped."""
    fields = _stat(pid)
    total = sum(int(f) for f in fields[11:15])
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                child = _stat(int(entry.name))
            except OSError:
                continue
            if int(child[1]) == pid:
                total += int(child[11]) + int(child[12])
    return total / os.sysconf("SC_CLK_TCK")


def postmaster_pid(dsn: str) -> int:
    """The PostgreSQL server behind ``dsn``: the parent of its checkpointer."""
    import asyncio

    import asyncpg

    async def ask() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            pid = await conn.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
            )
        finally:
            await conn.close()
        return int(pid)

    return int(_stat(asyncio.run(ask()))[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--parallel", type=int, default=32)
    parser.add_argument("--count", type=int, default=20_000, help="requests per run")
    parser.add_argument(
        "--runs", type=int, default=3, help="measured runs per server start, after a warm-up run"
    )
    parser.add_argument(
        "--located", action="store_true", help="place the NAS (latitude, longitude, country)"
    )
    parser.add_argument("--bench-dir", default=str(ROOT.parent / "shared" / "bench"))
    args = parser.parse_args()
    radload = Path(args.bench_dir) / "radload.py"
    gen = Path(args.bench_dir) / "gen_requests.py"
    admin = os.environ.get("ISPCARE_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    work = Path(tempfile.mkdtemp(prefix="ispcare-detect-"))
    requests = work / "auth.txt"
    generate = [sys.executable, str(gen), "auth", "--count", str(args.count)]
    generate += ["--users", str(args.users), "--out", str(requests)]
    subprocess.run(
        generate,
        check=True,
        capture_output=True,
    )
    subscribers = work / "subscribers.csv"
    with subscribers.open("w") as f:
        f.write("user_name,password\n")
        for i in range(1, args.users + 1):
            f.write(f"user{i},pass{i}\n")
    dsn, name = create_database(admin)
    srv = ServerProcess(work / "server", dsn, probe_secret=SECRET.encode())
    per_request: dict[str, list[float]] = {"off": [], "on": []}
    with_db: dict[str, list[float]] = {"off": [], "on": []}
    database = postmaster_pid(admin)
    try:
        srv.setup()
        place = ["--latitude", "51.5", "--longitude", "-0.12", "--country", "GB"]
        srv.cli(
            "nas", "add", "bench", "127.0.0.1", "--secret", SECRET, *(place if args.located else [])
        )
        srv.cli("subscriber", "import", str(subscribers), "--no-progress")
        load = [sys.executable, str(radload), "-f", str(requests), "-p", str(args.parallel)]
        load += ["-s", SECRET, "--port", str(srv.auth_port), "auth"]
        for rnd in range(args.rounds):
            for mode in ("off", "on") if rnd % 2 == 0 else ("on", "off"):
                srv.extra_config = f"\n[detect]\nenabled = {'true' if mode == 'on' else 'false'}\n"
                srv.write_config()
                srv.start()
                assert srv.proc is not None
                subprocess.run(load, capture_output=True, check=True)  # warm the cache
                before = cpu_seconds(srv.proc.pid)
                db_before = tree_cpu_seconds(database)
                answered = 0
                for _ in range(args.runs):
                    out = subprocess.run(load, capture_output=True, text=True, check=True).stdout
                    result = json.loads(out.strip().splitlines()[-1])
                    answered += args.count - int(result.get("lost", 0))
                used = cpu_seconds(srv.proc.pid) - before
                db_used = tree_cpu_seconds(database) - db_before
                per_request[mode].append(used / answered * 1e6)
                with_db[mode].append((used + db_used) / answered * 1e6)
                print(
                    f"round {rnd + 1} detection {mode}: {per_request[mode][-1]:.1f} us CPU/request"
                    f" (server), {with_db[mode][-1]:.1f} (server + PostgreSQL),"
                    f" {result.get('rps')} req/s",
                    flush=True,
                )
                srv.stop()
    finally:
        srv.kill()
        drop_database(admin, name)
    for label, series in (("server", per_request), ("server + PostgreSQL", with_db)):
        off, on = statistics.median(series["off"]), statistics.median(series["on"])
        # Each round's on and off ran back to back: their ratio cancels the
        # machine's slow drift, which the medians of each mode do not.
        paired = statistics.median(a / b for a, b in zip(series["on"], series["off"], strict=True))
        print(
            f"median CPU/request, {label}: off {off:.1f} us, on {on:.1f} us,"
            f" on/off = {on / off:.3f}; median of the rounds' on/off = {paired:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
