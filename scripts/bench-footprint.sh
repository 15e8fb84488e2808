#!/usr/bin/env bash
# Footprint of one tenant's control plane: stripped binary sizes of `qleet-control-plane` and
# `qleet`, and the resident memory of idle control planes (N standalone processes, each on its
# own fresh database, measured after they have settled), printed as a Markdown section.
#
# Two builds of the control plane are measured in the same run: the ordinary release build
# (glibc, dynamically linked; also the size comparison with `qleet`, release against release)
# and the one that ships in images, `--profile dist --target x86_64-unknown-linux-musl` (static,
# size-optimised, fat LTO): most of an idle control plane's memory is its own code's pages, so
# fewer, denser pages and no shared C libraries are what make it small.
#
#   scripts/bench-footprint.sh                      # both builds, 10 control planes each
#   QLEET_BENCH_N=20 scripts/bench-footprint.sh
#   QLEET_BENCH_BASELINE_BIN=/path/to/old/qleet scripts/bench-footprint.sh
#       also measures `<old qleet> control-plane` (the pre-split binary) in the same run
#
# PostgreSQL: QLEET_BENCH_DATABASE_URL (an admin URL), default postgres://postgres@127.0.0.1:5432/postgres.
source "$(dirname "$0")/lib.sh"
ensure_apt wrk wrk
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
N=${QLEET_BENCH_N:-10}
SETTLE=${QLEET_BENCH_SETTLE_SECS:-5}
ADMIN=${QLEET_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d)
PIDS=()
DBS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for d in "${DBS[@]}"; do psql "$ADMIN" -XAtqc "drop database if exists $d with (force)" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) { print "n/a"; exit }
  if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# Proportional set size: shared pages (the binary's own text, shared libraries) divided among the
# processes that map them.
pss_kb() { awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ -z "${QLEET_BENCH_SKIP_BUILD:-}" ]; then
  ensure_musl_target
  cargo build --release -p qleet -p qleet-control-plane >&2
  cargo build --profile dist --target "$MUSL_TARGET" -p qleet-control-plane >&2
fi
CP="$TARGET/release/qleet-control-plane"
DIST="$TARGET/$MUSL_TARGET/dist/qleet-control-plane"
QLEET="$TARGET/release/qleet"
strip -o "$WORK/qleet-control-plane" "$CP"
strip -o "$WORK/qleet" "$QLEET"
cp_size=$(stat -c %s "$WORK/qleet-control-plane")
qleet_size=$(stat -c %s "$WORK/qleet")
dist_size=$(stat -c %s "$DIST")

# Starts `$@` as a standalone control plane on a fresh database; echoes its pid once it is ready.
start_cp() {
  local db="qleet_bench_fp_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  psql "$ADMIN" -XAtqc "create database $db" >/dev/null
  DBS+=("$db")
  local port; port=$(free_port)
  RUST_LOG=warn DATABASE_URL="${ADMIN%/*}/$db" QLEET_CP_ID=$(cat /proc/sys/kernel/random/uuid) \
    QLEET_CP_ADMIN_TOKEN=bench-admin-token-0123456789abcdef0123 QLEET_CP_LISTEN="127.0.0.1:$port" \
    "$@" >/dev/null 2>>"$WORK/cp.log" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 200); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$WORK/cp.log" >&2; die "a control plane did not start"; }
  # One request, as the gateway's first would, so the measure is of a control plane that has served.
  curl -fs "http://127.0.0.1:$port/graphql" -H 'Authorization: Bearer bench-admin-token-0123456789abcdef0123' \
    -H 'content-type: application/json' -d '{"query":"{ controlPlane { id } }"}' >/dev/null
  LAST_PID=$pid
  LAST_PORT=$port
}

measure() { # label, command...
  local label=$1; shift
  local pids=()
  for _ in $(seq "$N"); do start_cp "$@"; pids+=("$LAST_PID"); done
  sleep "$SETTLE"
  for p in "${pids[@]}"; do rss_kb "$p"; done | median >"$WORK/$label.rss"
  for p in "${pids[@]}"; do pss_kb "$p"; done | median >"$WORK/$label.pss"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}

# Requests per second of one control plane answering `{ controlPlane { id } }` (wrk, 16
# connections, 5 s per round); rounds alternate between the builds so noise hits both alike.
ROUNDS=${QLEET_BENCH_ROUNDS:-3}
wrk_rps() { wrk -t2 -c16 -d5s -s "$ROOT/bench/cp_direct.lua" "http://127.0.0.1:$1/graphql" |
  awk '/^Requests\/sec/ { print $2 }'; }
throughput() {
  export QLEET_BENCH_CP_TOKEN=bench-admin-token-0123456789abcdef0123
  start_cp "$CP"; local new_port=$LAST_PORT new_pid=$LAST_PID
  start_cp "$DIST"; local dist_port=$LAST_PORT dist_pid=$LAST_PID
  : >"$WORK/new.rps"; : >"$WORK/dist.rps"
  for _ in $(seq "$ROUNDS"); do
    wrk_rps "$new_port" >>"$WORK/new.rps"
    wrk_rps "$dist_port" >>"$WORK/dist.rps"
  done
  kill "$new_pid" "$dist_pid" 2>/dev/null || true
}

say "measuring $N idle control planes of each binary"
measure new "$CP"
new=$(cat "$WORK/new.rss")
measure dist "$DIST"
dist=$(cat "$WORK/dist.rss")
say "throughput of each build, $ROUNDS rounds"
throughput
new_rps=$(median <"$WORK/new.rps")
dist_rps=$(median <"$WORK/dist.rps")
base=""
if [ -n "${QLEET_BENCH_BASELINE_BIN:-}" ]; then
  measure base "$QLEET_BENCH_BASELINE_BIN" control-plane
  base=$(cat "$WORK/base.rss")
fi

cat <<MD
## Control-plane footprint (issue 10): binary size and idle memory

Command: \`scripts/bench-footprint.sh\` ($N standalone control planes per binary, each on its own
fresh database, one GraphQL request each, VmRSS and PSS read after ${SETTLE} s idle; $(nproc) cores).
Run on $(date -u +%Y-%m-%d). *release*: \`cargo build --release\` (glibc); *dist*: what images ship,
\`cargo build --profile dist --target $MUSL_TARGET -p qleet-control-plane\` (static).

| measure | value |
| --- | ---: |
| \`qleet-control-plane\`, stripped | $(mib $((cp_size / 1024))) MiB |
| \`qleet\` (management plane), stripped | $(mib $((qleet_size / 1024))) MiB |
| ratio control plane / qleet | $(awk -v a="$cp_size" -v b="$qleet_size" 'BEGIN { printf "%.2f", a / b }') |
| \`qleet-control-plane\` dist (musl, static), stripped | $(mib $((dist_size / 1024))) MiB |
| idle \`qleet-control-plane\` release, median VmRSS of $N (PSS) | $(mib "$new") MiB ($(mib "$(cat "$WORK/new.pss")") MiB) |
| idle \`qleet-control-plane\` dist, median VmRSS of $N (PSS) | $(mib "$dist") MiB ($(mib "$(cat "$WORK/dist.pss")") MiB) |
| ratio dist / release (VmRSS) | $(awk -v a="$dist" -v b="$new" 'BEGIN { printf "%.2f", a / b }') |
| \`{ controlPlane { id } }\` req/s, release (median of $ROUNDS × 5 s, wrk -c16) | $new_rps |
| \`{ controlPlane { id } }\` req/s, dist | $dist_rps |
| ratio dist / release (req/s) | $(awk -v a="$dist_rps" -v b="$new_rps" 'BEGIN { printf "%.2f", a / b }') |
MD
if [ -n "$base" ]; then
  cat <<MD
| idle pre-split \`qleet control-plane\` (\`$QLEET_BENCH_BASELINE_BIN\`), median VmRSS of $N | $(mib "$base") MiB |
| ratio new / pre-split | $(awk -v a="$new" -v b="$base" 'BEGIN { printf "%.2f", a / b }') |
MD
fi
