#!/usr/bin/env bash
# Runs Qleet locally: installs what is missing (PostgreSQL server binaries, the wasm toolchain),
# builds the web UI and the server in release mode, and starts `qleet dev`, which keeps a private
# PostgreSQL under .qleet/ unless DATABASE_URL is set. Extra arguments go to `qleet dev`.
source "$(dirname "$0")/lib.sh"

[ -n "${DATABASE_URL:-}" ] || ensure_postgres_binaries
ensure_wasm_tools
if command -v npm >/dev/null && [ ! -x tests/node_modules/.bin/wasm-opt ]; then
  (cd tests && npm ci --no-audit --no-fund --loglevel=error) || true
fi
export PATH="$ROOT/tests/node_modules/.bin:$PATH"
say "building the web UI"
SITE=$(scripts/build-ui.sh --release | tail -n 1)
say "building the server"
cargo build --release -p qleet -p qleet-control-plane
exec env QLEET_SITE_DIR="${QLEET_SITE_DIR:-$SITE}" "${CARGO_TARGET_DIR:-target}/release/qleet" dev "$@"
