#!/usr/bin/env bash
# Regenerates the query data that the `sqlx::query!` macros build from (SQLX_OFFLINE, see
# .cargo/config.toml): for each crate with queries, a throwaway database on the test server gets
# that crate's migrations, then `cargo sqlx prepare` rewrites the crate's `.sqlx/`.
#
#   scripts/sqlx-prepare.sh           rewrite backend/.sqlx and control-plane/.sqlx
#   scripts/sqlx-prepare.sh --check   change nothing; fail if the committed data is stale (a query
#                                     or a migration changed, or a file is left over)
#
# The server is QLEET_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres).
source "$(dirname "$0")/lib.sh"

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) die "usage: scripts/sqlx-prepare.sh [--check]" ;;
esac

ensure_sqlx_cli

SERVER_URL=${QLEET_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
# The server URL with another database name (any ?query is kept).
db_url() {
  local base=${SERVER_URL%%\?*} query=""
  [ "$base" = "$SERVER_URL" ] || query="?${SERVER_URL#*\?}"
  printf '%s/%s%s' "${base%/*}" "$1" "$query"
}

WORK=$(mktemp -d)
DATABASES=()
cleanup() {
  for url in "${DATABASES[@]}"; do sqlx database drop -y --force --database-url "$url" >/dev/null 2>&1 || true; done
  # A --check run puts back the committed data it compared against.
  for saved in "$WORK"/saved-*; do
    [ -d "$saved" ] || continue
    local dir; dir=$(cat "$saved.path")
    rm -rf "$dir" && cp -a "$saved" "$dir"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

stale=()
# prepare CRATE-DIR MIGRATIONS-DIR URL-VARIABLE: URL-VARIABLE is the crate's
# `common.database-url-var` in its sqlx.toml.
prepare() {
  local crate=$1 migrations=$2 var=$3
  local url; url=$(db_url "qleet_sqlx_$(basename "$crate" | tr - _)_$$")
  DATABASES+=("$url")
  sqlx database create --database-url "$url" >/dev/null
  sqlx migrate run --source "$migrations" --database-url "$url" >/dev/null

  if [ "$check" = 1 ]; then
    local saved="$WORK/saved-$(basename "$crate")"
    if [ -d "$crate/.sqlx" ]; then cp -a "$crate/.sqlx" "$saved"; else mkdir "$saved"; fi
    echo "$ROOT/$crate/.sqlx" >"$saved.path"
  fi

  local log="$WORK/prepare-$(basename "$crate").log"
  say "cargo sqlx prepare ($crate, migrations from $migrations)"
  # The macros read the crate's own variable; sqlx-cli itself is given the URL explicitly.
  if ! (cd "$crate" && env "$var=$url" cargo sqlx prepare --database-url "$url") >"$log" 2>&1; then
    cat "$log" >&2
    if [ "$check" = 1 ]; then
      die "$crate/.sqlx is stale: its queries no longer compile against the migrations (see above); run scripts/sqlx-prepare.sh"
    fi
    die "cargo sqlx prepare failed for $crate (see above)"
  fi

  if [ "$check" = 1 ]; then
    local old="$WORK/saved-$(basename "$crate")" new="$crate/.sqlx" missing leftover changed=()
    missing=$(comm -13 <(ls "$old") <(ls "$new"))
    leftover=$(comm -23 <(ls "$old") <(ls "$new"))
    for f in $(comm -12 <(ls "$old") <(ls "$new")); do
      cmp -s "$old/$f" "$new/$f" || changed+=("$f")
    done
    local n_missing n_leftover; n_missing=$(grep -c . <<<"$missing" || true); n_leftover=$(grep -c . <<<"$leftover" || true)
    if [ "$n_missing" -gt 0 ] || [ "$n_leftover" -gt 0 ] || [ "${#changed[@]}" -gt 0 ]; then
      local example; example=$(printf '%s\n' $missing $leftover "${changed[@]}" | head -n 1)
      stale+=("$new has $n_missing query file(s) missing, $n_leftover left over and ${#changed[@]} changed (e.g. $example)")
    fi
  fi
}

prepare backend migrations/management QLEET_SQLX_MANAGEMENT_URL
prepare control-plane migrations/control-plane QLEET_SQLX_CONTROL_PLANE_URL

if [ "$check" = 1 ]; then
  if [ "${#stale[@]}" -gt 0 ]; then
    for line in "${stale[@]}"; do printf 'error: stale SQL query data: %s; run scripts/sqlx-prepare.sh and commit it\n' "$line" >&2; done
    exit 1
  fi
  say "the committed .sqlx query data is up to date"
else
  say "query data written to backend/.sqlx and control-plane/.sqlx; commit them"
fi
