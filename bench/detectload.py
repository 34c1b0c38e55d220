"""What suspicious-login detection costs: auth CPU per request with it on and off.

One database, one subscriber set, the shared load generator
(``../shared/bench/radload.py``), and two servers side by side: one with
``[detect] enabled`` on, one with it off, sharing the database and its key.
Each round starts both, warms each with one run (the subscriber cache, and
with detection on the detector's per-subscriber keys), then measures
``--pairs`` pairs of runs, one on each server back to back, alternating which
goes first. A run's figure is the CPU time of its server process, and of the
PostgreSQL server (as the shared harness counts it), read from /proc around
it, per answered request. Prints each pair, the medians of each mode and their
ratio, and the median and quartiles of the pairs' own on/off ratios: a pair's
runs are seconds apart, so the shared machine's drift cancels out of them.

    .venv/bin/python bench/detectload.py [--rounds 4] [--pairs 8] [--users 20000]
                                         [--count 20000] [--located]

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
import shutil
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
    free_udp_port,
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
    parser.add_argument("--rounds", type=int, default=4, help="starts of the two servers")
    parser.add_argument(
        "--pairs", type=int, default=8, help="measured on/off pairs of runs per round"
    )
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--parallel", type=int, default=32)
    parser.add_argument("--count", type=int, default=20_000, help="requests per run")
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
    subprocess.run(generate, check=True, capture_output=True)
    subscribers = work / "subscribers.csv"
    with subscribers.open("w") as f:
        f.write("user_name,password\n")
        for i in range(1, args.users + 1):
            f.write(f"user{i},pass{i}\n")
    dsn, name = create_database(admin)
    modes = ("off", "on")
    ports: set[int] = set()

    def port() -> int:
        """A free UDP port neither server has yet."""
        while (found := free_udp_port()) in ports:
            pass
        ports.add(found)
        return found

    servers = {
        m: ServerProcess(work / m, dsn, port(), port(), probe_secret=SECRET.encode()) for m in modes
    }
    for mode, srv in servers.items():
        srv.extra_config = f"\n[detect]\nenabled = {'true' if mode == 'on' else 'false'}\n"
    per_request: dict[str, list[float]] = {m: [] for m in modes}
    with_db: dict[str, list[float]] = {m: [] for m in modes}
    database = postmaster_pid(admin)
    try:
        servers["off"].setup()
        # One database, so one master key: the second server gets a copy.
        shutil.copytree(servers["off"].key_path.parent, servers["on"].key_path.parent)
        servers["on"].write_config()
        place = ["--latitude", "51.5", "--longitude", "-0.12", "--country", "GB"]
        srv = servers["off"]
        srv.cli(
            "nas", "add", "bench", "127.0.0.1", "--secret", SECRET, *(place if args.located else [])
        )
        srv.cli("subscriber", "import", str(subscribers), "--no-progress")

        def load(srv: ServerProcess) -> int:
            """One run of ``--count`` requests against ``srv``; how many were answered."""
            cmd = [sys.executable, str(radload), "-f", str(requests), "-p", str(args.parallel)]
            cmd += ["-s", SECRET, "--port", str(srv.auth_port), "auth"]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            return args.count - int(json.loads(out.strip().splitlines()[-1]).get("lost", 0))

        for rnd in range(args.rounds):
            for mode in modes if rnd % 2 == 0 else modes[::-1]:
                servers[mode].start()
                load(servers[mode])  # warm the cache and the detector's keys
            for pair in range(args.pairs):
                for mode in modes if (rnd + pair) % 2 == 0 else modes[::-1]:
                    proc = servers[mode].proc
                    assert proc is not None
                    before = cpu_seconds(proc.pid)
                    db_before = tree_cpu_seconds(database)
                    answered = load(servers[mode])
                    used = cpu_seconds(proc.pid) - before
                    db_used = tree_cpu_seconds(database) - db_before
                    per_request[mode].append(used / answered * 1e6)
                    with_db[mode].append((used + db_used) / answered * 1e6)
                on, off = per_request["on"][-1], per_request["off"][-1]
                print(
                    f"round {rnd + 1} pair {pair + 1}: server CPU/request off {off:.1f} us,"
                    f" on {on:.1f} us, on/off {on / off:.3f}",
                    flush=True,
                )
            for srv in servers.values():
                srv.stop()
    finally:
        for srv in servers.values():
            srv.kill()
        drop_database(admin, name)
    for label, series in (("server", per_request), ("server + PostgreSQL", with_db)):
        off, on = statistics.median(series["off"]), statistics.median(series["on"])
        # A pair's two runs are back to back: their ratio cancels the
        # machine's drift, which the medians of each mode do not.
        ratios = sorted(a / b for a, b in zip(series["on"], series["off"], strict=True))
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        print(
            f"{label}: median CPU/request off {off:.1f} us, on {on:.1f} us,"
            f" on/off = {on / off:.3f}; pairs' on/off: median {statistics.median(ratios):.3f},"
            f" quartiles {quartiles[0]:.3f} to {quartiles[2]:.3f},"
            f" {len(ratios)} pairs in {args.rounds} server starts"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
