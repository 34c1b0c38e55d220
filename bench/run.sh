#!/usr/bin/env bash
# Side-by-side benchmark: ispcare-radius vs FreeRADIUS 3.2 + PostgreSQL on this
# machine, with ../shared/bench (or $BENCH_DIR). Both hold the same 100,000
# subscribers userN/passN and NAS 127.0.0.1/testing123; ours gets them through
# its own bulk import. Prints compare.py's per-round figures and median ratios.
#
#   bench/run.sh [--rounds 5] [--parallel 32] [--kinds auth,acct] [--users 100000]
#                [--methods pap,chap,mschapv2] [--workers 1]
#
# Our database: $ISPCARE_BENCH_DSN if set, else an embedded PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH_DIR=${BENCH_DIR:-$ROOT/../shared/bench}
ROUNDS=5; PARALLEL=32; KINDS=auth,acct; USERS=100000; METHODS=pap,chap,mschapv2; WORKERS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2;;
    --parallel) PARALLEL=$2; shift 2;;
    --kinds) KINDS=$2; shift 2;;
    --users) USERS=$2; shift 2;;
    --methods) METHODS=$2; shift 2;;   # "" skips the method comparison
    --workers) WORKERS=$2; shift 2;;   # server processes ([server] workers)
    *) echo "bench/run.sh: unknown argument $1" >&2; exit 2;;
  esac
done
[ -x "$BENCH_DIR/compare.py" ] || { echo "bench/run.sh: no harness at $BENCH_DIR" >&2; exit 2; }

bash scripts/bootstrap.sh
WORK=${ISPCARE_BENCH_WORK:-/tmp/ispcare-bench}
# Every run starts from an empty database and a new key: the import is part
# of what is measured, and old rows cannot skew the run.
if [ -z "${ISPCARE_BENCH_DSN:-}" ] && [ -d "$WORK" ]; then
  PGCTL=$(.venv/bin/python -c 'import pgserver, pathlib; print(pathlib.Path(pgserver.__file__).parent / "pginstall/bin/pg_ctl")')
  [ -f "$WORK/pgdata/postmaster.pid" ] && runuser -u pgserver -- "$PGCTL" -D "$WORK/pgdata" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
fi
mkdir -p "$WORK"
export ISPCARE_STATE_DIR=$WORK/state
CFG=$WORK/bench.toml
cat > "$CFG" <<TOML
[server]
auth_listen = ["127.0.0.1:1812"]
acct_listen = ["127.0.0.1:1813"]
recv_buffer_bytes = 4194304
workers = $WORKERS
[database]
dsn = "${ISPCARE_BENCH_DSN:-}"
embedded_dir = "$WORK/pgdata"
[keys]
master_key_file = "$WORK/master.key"
[logging]
format = "json"
TOML
IR() { .venv/bin/ispcare-radius --config "$CFG" "$@"; }

# Reference server: install once per machine, then start.
[ -d /tmp/frbench-ref/raddb ] || "$BENCH_DIR/setup_freeradius_pg.sh"
"$BENCH_DIR/servers.sh" start

[ -f "$WORK/master.key" ] || IR keys init
IR migrate
IR nas list | grep -q '^bench-nas' || IR nas add bench-nas 127.0.0.1 --secret testing123 --vendor mikrotik --ma-policy no
IR plan list | grep -q 'name=bench-plan' || IR plan add bench-plan --download 20M --upload 5M --session-timeout 86400
if ! IR subscriber show user1 >/dev/null 2>&1; then
  python3 - "$USERS" "$WORK/subscribers.csv" <<'PY'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    f.write("user_name,password,plan\n")
    for i in range(1, n + 1):
        f.write(f"user{i},pass{i},bench-plan\n")
PY
  start=$(date +%s.%N)
  IR subscriber import "$WORK/subscribers.csv"
  echo "import of $USERS subscribers: $(python3 -c "print(round($(date +%s.%N)-$start,1))") s"
fi

.venv/bin/ispcare-radius --config "$CFG" serve > "$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; "$BENCH_DIR/servers.sh" stop' EXIT
# Wait until it answers (radclient Status-Server) and its cache is warm.
for _ in $(seq 1 120); do
  if echo "Message-Authenticator = 0x00" | radclient -q -r 1 -t 0.5 127.0.0.1:1812 status testing123 >/dev/null 2>&1; then break; fi
done
for _ in $(seq 1 300); do
  [ "$(grep -c '"cache_prewarm' "$WORK/server.log" || true)" -ge "$WORKERS" ] && break
  sleep 1
done
PG_PID=""
if [ -z "${ISPCARE_BENCH_DSN:-}" ]; then
  PG_PID=$(head -1 "$WORK/pgdata/postmaster.pid")
else
  PG_PID=$(pgrep -o -x postgres || true)
  [ -n "$PG_PID" ] && PG_PID=$(ps -o ppid= -p "$PG_PID" | tr -d ' ' | grep -v '^1$' || echo "$PG_PID")
fi
WATCH=(--ours-watch "ours=tree:$SERVER")
[ -n "$PG_PID" ] && WATCH+=(--ours-watch "pg=tree:$PG_PID")
python3 "$BENCH_DIR/compare.py" --secret testing123 "${WATCH[@]}" \
  --kinds "$KINDS" --rounds "$ROUNDS" --parallel "$PARALLEL" --users "$USERS"
# PAP, CHAP and MS-CHAPv2 side by side (the shared load generator speaks PAP only).
if [ -n "$METHODS" ]; then
  MWATCH=(--ours-watch "tree:$SERVER")
  [ -n "$PG_PID" ] && MWATCH+=(--ours-watch "tree:$PG_PID")
  .venv/bin/python bench/methodload.py --compare --kinds "$METHODS" --rounds "$ROUNDS" \
    --parallel "$PARALLEL" --users "$USERS" --bench-dir "$BENCH_DIR" "${MWATCH[@]}"
fi
