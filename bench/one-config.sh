#!/usr/bin/env bash
# One sotto-bench run against a fresh set-up, from the binaries in BIN_DIR (sotto-server,
# sotto-bench), printing sotto-bench's JSON. Used to compare two builds of the server:
#
#   bench/one-config.sh BIN_DIR sqlite|pg|nats [sotto-bench options...]
#
# sqlite: one node on SQLite; pg: one node on a scratch PostgreSQL database; nats: two
# nodes on one scratch database and NATS (127.0.0.1:4222), senders on the first node and
# recipients on the second. PostgreSQL at 127.0.0.1:5432 (user postgres, database test).
set -euo pipefail
bin=$1; cfg=$2; shift 2

work=$(mktemp -d); pids=()
db="sotto_ab_$$"
cleanup() { for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null || true; psql -h 127.0.0.1 -U postgres -d test -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
start() { local name=$1 port=$2; shift 2
  env SOTTO_LOG=warn "$@" $bin/sotto-server --listen 127.0.0.1:$port --data-dir $work/$name >$work/$name.out 2>&1 & pids+=($!)
  for _ in $(seq 1 200); do grep -q "listening on" $work/$name.out 2>/dev/null && return 0; sleep 0.1; done; cat $work/$name.out >&2; exit 1; }
pg="postgres://postgres@127.0.0.1:5432/$db"
case $cfg in
  sqlite) start s 7701; args=(--server http://127.0.0.1:7701) ;;
  pg) psql -h 127.0.0.1 -U postgres -d test -qc "CREATE DATABASE $db"; start p 7702 SOTTO_STORE=postgres SOTTO_DATABASE_URL=$pg; args=(--server http://127.0.0.1:7702) ;;
  nats) psql -h 127.0.0.1 -U postgres -d test -qc "CREATE DATABASE $db"
     start n1 7703 SOTTO_STORE=postgres SOTTO_DATABASE_URL=$pg SOTTO_FANOUT=nats SOTTO_NATS_URL=nats://127.0.0.1:4222 SOTTO_NATS_PREFIX=ab$$
     start n2 7704 SOTTO_STORE=postgres SOTTO_DATABASE_URL=$pg SOTTO_FANOUT=nats SOTTO_NATS_URL=nats://127.0.0.1:4222 SOTTO_NATS_PREFIX=ab$$
     args=(--server http://127.0.0.1:7703 --recipient-server http://127.0.0.1:7704) ;;
esac
$bin/sotto-bench "${args[@]}" --json "$@"
