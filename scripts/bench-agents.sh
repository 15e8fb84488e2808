#!/usr/bin/env bash
# Measures the tenant agent (issue 5) against the release builds
# (control-plane/examples/bench_agents.rs):
#   1. the `qleet-agent` binary's size, as built and stripped, next to `qleet`'s;
#   2. the real `qleet-agent`'s resident memory after idling QLEET_BENCH_IDLE_SECS (15) s against
#      a control plane (registered with a one-time token, long-polling, heartbeating);
#   3. the task round trip on loopback with a simulated agent: apply one bucket -> leased ->
#      reported -> Ready, QLEET_BENCH_TRIPS (50) per round, against /healthz and an empty lease;
#   4. QLEET_BENCH_FLEET (1,000) simulated agents connected to one control plane: its memory,
#      CPU and database traffic with none and all connected, and heartbeats/s under
#      QLEET_BENCH_CLIENTS (64) closed-loop clients against /healthz under the same load.
# Every run starts `qleet-control-plane` on a fresh database of the PostgreSQL server at
# QLEET_BENCH_DATABASE_URL (an admin URL; default the local one) and drops it afterwards.
# QLEET_BENCH_ROUNDS (3) rounds. Prints a Markdown section on stdout; progress goes to stderr.
source "$(dirname "$0")/lib.sh"

export QLEET_BENCH_DATABASE_URL=${QLEET_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
case "${CARGO_TARGET_DIR:-target}" in
  /*) TARGET=$CARGO_TARGET_DIR ;;
  *) TARGET="$ROOT/${CARGO_TARGET_DIR:-target}" ;;
esac

if [ -z "${QLEET_BENCH_SKIP_BUILD:-}" ]; then
  cargo build --release -p qleet-control-plane --bin qleet-control-plane --example bench_agents >&2
  cargo build --release -p qleet-agent >&2
fi
export QLEET_BENCH_BIN="$TARGET/release/qleet-control-plane"
export QLEET_BENCH_AGENT_BIN="$TARGET/release/qleet-agent"
# 1,000 long-polls, heartbeats and the load's connections are open at once, on both ends.
want=$(( ${QLEET_BENCH_FLEET:-1000} * 3 + 1024 ))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want" ]; then
  ulimit -n "$want" 2>/dev/null || die "ulimit -n is $(ulimit -n); the fleet needs about $want open files"
fi
say "agent benchmark: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git'), ${QLEET_BENCH_ROUNDS:-3} rounds"
"$TARGET/release/examples/bench_agents"
