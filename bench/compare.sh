#!/usr/bin/env bash
# Runs the same sotto-bench workload against a SQLite server and a PostgreSQL server
# (both started here on free ports, from release builds) and prints one table.
#
#   bench/compare.sh [sotto-bench options...]     e.g. bench/compare.sh --pairs 100 --duration 10
#
# PostgreSQL: $SOTTO_BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test)
# is used to create and drop a scratch database. Needs python3 for the table.
set -euo pipefail
cd "$(dirname "$0")/.."

admin_url="${SOTTO_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
db="sotto_compare_$$"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet -p sotto-server-bin -p sotto-bench
server=target/release/sotto-server
bench=target/release/sotto-bench

# start NAME PORT [ENV=VALUE...]: a server in the background, waits for its start-up line.
start() {
    local name=$1 port=$2
    shift 2
    env SOTTO_LOG=warn "$@" "$server" --listen "127.0.0.1:$port" --data-dir "$work/$name" \
        >"$work/$name.out" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 100); do
        grep -q "listening on" "$work/$name.out" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "the $name server did not start:" >&2
    cat "$work/$name.out" >&2
    exit 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

psql "$admin_url" -qc "CREATE DATABASE $db" >/dev/null
base="${admin_url%/*}"
sqlite_port=$(free_port)
pg_port=$(free_port)
start sqlite "$sqlite_port"
start postgres "$pg_port" SOTTO_STORE=postgres SOTTO_DATABASE_URL="$base/$db"

echo "workload: sotto-bench $*" >&2
"$bench" --server "http://127.0.0.1:$sqlite_port" --json "$@" >"$work/sqlite.json"
"$bench" --server "http://127.0.0.1:$pg_port" --json "$@" >"$work/postgres.json"

python3 - "$work/sqlite.json" "$work/postgres.json" <<'PY'
import json, sys
rows = [("SQLite", json.load(open(sys.argv[1]))), ("PostgreSQL", json.load(open(sys.argv[2])))]
mode = rows[0][1].get("mode")
if mode in ("relay", "e2e"):
    print(f"{'back end':<12} {'accepted/s':>11} {'delivered/s':>12} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}  errors")
    for name, r in rows:
        l = r["latency_ms"]
        print(f"{name:<12} {r['accepted_per_s']:>11.0f} {r['delivered_per_s']:>12.0f} {l['p50']:>8.2f} {l['p90']:>8.2f} {l['p99']:>8.2f} {l['max']:>8.2f}  {r['errors'] or '-'}")
elif mode == "fanout":
    print(f"{'back end':<12} {'devices':>8}  durable ms per round / all delivered ms per round")
    for name, r in rows:
        d = " / ".join(f"{x['durable_ms']:.1f}" for x in r["rounds"])
        a = " / ".join(f"{x['all_delivered_ms']:.1f}" for x in r["rounds"])
        print(f"{name:<12} {r['recipient_devices']:>8}  {d}  |  {a}")
else:
    for name, r in rows:
        print(name, json.dumps(r))
PY
