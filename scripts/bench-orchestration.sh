#!/usr/bin/env bash
# Measures the control plane's orchestration engine (issue 4) against the release build, with a
# test agent that completes every task at once (control-plane/examples/bench_orchestration.rs):
#   1. a chain of QLEET_BENCH_CHAIN (50) dependent workloads: apply -> all Ready, per-hop
#      latency and where a hop's time goes; notify-driven and, in the same round, the polling
#      baseline (control plane with QLEET_CP_POLL_MS, agent polling at the same interval);
#   2. a wide graph of QLEET_BENCH_WIDE (1,000) buckets on one account, QLEET_BENCH_AGENTS (4)
#      lease loops: time to converge, objects/s, CPU, the control plane's peak RSS.
# Every run starts `qleet-control-plane` on a fresh database of the PostgreSQL server at
# QLEET_BENCH_DATABASE_URL (an admin URL; default the local one) and drops it afterwards.
# QLEET_BENCH_ROUNDS (5) rounds. Prints a Markdown section on stdout; progress goes to stderr.
source "$(dirname "$0")/lib.sh"

export QLEET_BENCH_DATABASE_URL=${QLEET_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
case "${CARGO_TARGET_DIR:-target}" in
  /*) TARGET=$CARGO_TARGET_DIR ;;
  *) TARGET="$ROOT/${CARGO_TARGET_DIR:-target}" ;;
esac

[ -n "${QLEET_BENCH_SKIP_BUILD:-}" ] ||
  cargo build --release -p qleet-control-plane --bin qleet-control-plane --example bench_orchestration >&2
export QLEET_BENCH_BIN="$TARGET/release/qleet-control-plane"
say "orchestration benchmark: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git'), ${QLEET_BENCH_ROUNDS:-5} rounds"
"$TARGET/release/examples/bench_orchestration"
