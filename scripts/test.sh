#!/usr/bin/env bash
# Runs every test: installs what the tests need (PostgreSQL, Node and the OpenID provider
# package, localstripe, Chromium and chromedriver, the wasm toolchain, sqlx-cli), starts PostgreSQL if
# none answers, builds the web UI, checks formatting, lints and the committed SQL query data, then
# runs the whole test suite.
source "$(dirname "$0")/lib.sh"

ensure_postgres_binaries
ensure_apt chromium chromium /usr/bin/chromium
ensure_apt chromium-driver chromedriver
ensure_node_deps
ensure_localstripe
ensure_moto
ensure_wasm_tools
ensure_sqlx_cli
# The container images' test (backend/tests/api/images.rs): podman with runc, what it builds
# its agent's network namespace with, and the helm its agent image carries.
ensure_apt podman podman
ensure_apt runc /usr/sbin/runc
ensure_apt iproute2 ip
ensure_apt iptables iptables
ensure_helm

# PostgreSQL for the tests: the machine's own on 127.0.0.1:5432 if it lets `postgres` in without
# a password, else a private throwaway cluster.
if [ -z "${QLEET_TEST_DATABASE_URL:-}" ]; then
  if psql "postgres://postgres@127.0.0.1:5432/postgres" -qAtc 'select 1' >/dev/null 2>&1; then
    export QLEET_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
  else
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    PGDIR=/tmp/qleet-test-pg
    PGPORT=55432
    if ! "$PGBIN/pg_ctl" -D "$PGDIR" status >/dev/null 2>&1; then
      say "starting a private PostgreSQL for the tests on 127.0.0.1:$PGPORT"
      run_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
      if [ ! -f "$PGDIR/PG_VERSION" ]; then
        mkdir -p "$PGDIR"; [ "$(id -u)" -ne 0 ] || chown postgres: "$PGDIR"
        run_pg "$PGBIN/initdb" -D "$PGDIR" -U postgres --auth=trust >/dev/null
      fi
      run_pg "$PGBIN/pg_ctl" -D "$PGDIR" -l "$PGDIR/log" -w \
        -o "-p $PGPORT -k $PGDIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
    fi
    export QLEET_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
  fi
fi
# Databases left by earlier runs.
psql "$QLEET_TEST_DATABASE_URL" -qAtc "select datname from pg_database where datname like 'qleet_test_%'" |
  while read -r db; do psql "$QLEET_TEST_DATABASE_URL" -qc "drop database if exists $db with (force)" >/dev/null; done

say "building the web UI"
QLEET_SITE_DIR=$(scripts/build-ui.sh | tail -n 1)
export QLEET_SITE_DIR

say "cargo fmt --check"
cargo fmt --all --check
say "the README's crate graph matches cargo metadata"
scripts/crate-graph.sh --check
say "cargo clippy"
cargo clippy --workspace --all-targets --features qleet/kubernetes -- -D warnings
cargo clippy -p qleet-frontend --lib --target wasm32-unknown-unknown --features hydrate -- -D warnings
say "the agent's Helm chart renders, refuses bad values and asks only for what the agent uses"
# helm from ensure_helm; python3 with PyYAML from moto's venv (moto depends on it).
PATH="$ROOT/target/helm:$ROOT/target/moto-venv/bin:$PATH" deploy/agent/check-chart.sh
say "the committed SQL query data (.sqlx/) matches the queries and migrations"
scripts/sqlx-prepare.sh --check
# The images' static binaries are built here, before the tests, so that their long (fat LTO)
# build does not run beside other tests; the test builds the images again from warm caches.
if [ "$(id -u)" -eq 0 ]; then
  say "building the container images"
  HELM_BIN="$ROOT/target/helm/helm" QLEET_IMAGE_REPO=localhost/qleet-test QLEET_IMAGE_TAG=test \
    scripts/build-images.sh
fi
say "cargo test"
LOG=$(mktemp)
set +e
cargo test --workspace --features qleet/kubernetes "$@" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one "test result" line per binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$LOG"
rm -f "$LOG"
exit "$status"
