#!/usr/bin/env bash
# Builds the browser half of the web UI (the `hydrate` build of qleet-frontend) into SITE/pkg:
#   qleet.js, qleet_bg.wasm  what Leptos' <HydrationScripts> loads for output name "qleet"
#   qleet.css                frontend/style.css
# SITE is $QLEET_SITE_DIR, else target/site (under $CARGO_TARGET_DIR if set). The server serves
# SITE/pkg at /pkg. The last line printed on stdout is SITE's absolute path; the rest goes to stderr.
#
# Usage: scripts/build-ui.sh [--release]   (--release also runs `wasm-opt -Oz` if it is on PATH)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-ui: %s\n' "$*" >&2; exit 1; }

profile=debug
cargo_flags=()
case "${1:-}" in
  "") ;;
  --release)
    profile=release
    cargo_flags=(--release)
    # Size over speed for the browser build (1.9 MB → 1.2 MB before wasm-opt's own pass). Only this
    # cargo run sees these, and wasm artifacts live apart from the server's, so nothing else
    # rebuilds. Set the variables yourself to override.
    export CARGO_PROFILE_RELEASE_OPT_LEVEL="${CARGO_PROFILE_RELEASE_OPT_LEVEL:-z}"
    export CARGO_PROFILE_RELEASE_LTO="${CARGO_PROFILE_RELEASE_LTO:-true}"
    export CARGO_PROFILE_RELEASE_CODEGEN_UNITS="${CARGO_PROFILE_RELEASE_CODEGEN_UNITS:-1}"
    ;;
  *) die "unknown argument '$1' (usage: scripts/build-ui.sh [--release])" ;;
esac

# The CLI must match the wasm-bindgen crate exactly, or the generated JS does not fit the wasm.
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[ -n "$want" ] || die "Cargo.lock names no wasm-bindgen crate; run 'cargo check -p qleet-frontend --features hydrate' first"
command -v wasm-bindgen >/dev/null 2>&1 \
  || die "wasm-bindgen is not on PATH; install it with: cargo install wasm-bindgen-cli --version $want"
have=$(wasm-bindgen --version | awk '{ print $2 }')
[ "$have" = "$want" ] \
  || die "wasm-bindgen is $have but Cargo.lock has $want; fix with: cargo install wasm-bindgen-cli --version $want"
if command -v rustup >/dev/null 2>&1 \
  && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  die "the wasm32-unknown-unknown target is missing; add it with: rustup target add wasm32-unknown-unknown"
fi

target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
site="${QLEET_SITE_DIR:-$target_dir/site}"
pkg="$site/pkg"

say "building qleet-frontend for the browser ($profile)"
cargo build -p qleet-frontend --lib --target wasm32-unknown-unknown --features hydrate \
  ${cargo_flags[@]+"${cargo_flags[@]}"}

wasm="$target_dir/wasm32-unknown-unknown/$profile/qleet_frontend.wasm"
[ -f "$wasm" ] || die "cargo did not produce $wasm"

mkdir -p "$pkg"
say "wasm-bindgen → $pkg"
wasm-bindgen --target web --no-typescript --out-dir "$pkg" --out-name qleet "$wasm"

if [ "$profile" = release ]; then
  if command -v wasm-opt >/dev/null 2>&1; then
    say "wasm-opt -Oz"
    wasm-opt -Oz "$pkg/qleet_bg.wasm" -o "$pkg/qleet_bg.opt.wasm"
    mv "$pkg/qleet_bg.opt.wasm" "$pkg/qleet_bg.wasm"
  else
    say "wasm-opt not on PATH: skipping size optimisation"
  fi
fi

cp frontend/style.css "$pkg/qleet.css"
say "built $(du -h "$pkg/qleet_bg.wasm" | cut -f1) qleet_bg.wasm, qleet.js, qleet.css"

(cd "$site" && pwd)
