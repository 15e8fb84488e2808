#!/usr/bin/env bash
# Measures the management plane's GraphQL latency and throughput against the release build, with
# a trivial route (/healthz) on the same server in the same run as the baseline. Needs wrk
# (apt-get install wrk) and a PostgreSQL (QLEET_BENCH_DATABASE_URL, default: the local one).
# Prints a Markdown table; BENCHMARKS.md holds the figures of the last run.
source "$(dirname "$0")/lib.sh"
ensure_apt wrk wrk

ADMIN=${QLEET_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=qleet_bench
psql "$ADMIN" -qc "drop database if exists $DB" -qc "create database $DB" >/dev/null
DB_URL="${ADMIN%/*}/$DB"
PORT=${QLEET_BENCH_PORT:-18080}
URL="http://127.0.0.1:$PORT"
DURATION=${QLEET_BENCH_DURATION:-15s}
CONNS=${QLEET_BENCH_CONNECTIONS:-64}
ROUNDS=${QLEET_BENCH_ROUNDS:-3}

cargo build --release -p qleet -p qleet-control-plane >&2
BIN="${CARGO_TARGET_DIR:-target}/release/qleet"
RUST_LOG=warn DATABASE_URL="$DB_URL" QLEET_LISTEN="127.0.0.1:$PORT" "$BIN" dev >/dev/null 2>/tmp/qleet-bench.log &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs "$URL/readyz" >/dev/null && break; sleep 0.1; done

# A user, an organisation and an API token to authenticate with.
COOKIE=$(curl -s -o /dev/null -D - -X POST "$URL/auth/dev" -d 'email=bench@example.test' |
  sed -n 's/^set-cookie: qleet_session=\([^;]*\).*/\1/ip')
gql() { curl -fs "$URL/graphql" -H "cookie: qleet_session=$COOKIE" -H "origin: $URL" \
  -H 'content-type: application/json' -d "$1"; }
gql '{"query":"mutation { createOrganization(slug: \"bench\", name: \"Bench\") { id } }"}' >/dev/null
TOKEN=$(gql '{"query":"mutation { createApiToken(org: \"bench\", name: \"bench\", role: VIEWER) { token } }"}' |
  sed 's/.*"token":"\([^"]*\)".*/\1/')
export QLEET_BENCH_TOKEN=$TOKEN

# wrk --latency prints percentiles; keep requests/s, p50 and p99 (in ms).
run() {
  wrk -t2 -c"$CONNS" -d"$DURATION" --latency "$@" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 }
    /Non-2xx/ { bad = $NF }
    END { printf "%s %s %s %s\n", rps, p50, p99, (bad == "" ? 0 : bad) }'
}
echo "| round | route | requests/s | p50 ms | p99 ms | non-2xx |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for r in $(seq "$ROUNDS"); do
  read -r rps p50 p99 bad < <(run "$URL/healthz")
  echo "| $r | GET /healthz (baseline) | $rps | $p50 | $p99 | $bad |"
  read -r rps p50 p99 bad < <(run -s bench/graphql_typename.lua "$URL/graphql")
  echo "| $r | POST /graphql { __typename } (anonymous, no database) | $rps | $p50 | $p99 | $bad |"
  read -r rps p50 p99 bad < <(run -s bench/graphql_typename_token.lua "$URL/graphql")
  echo "| $r | POST /graphql { __typename } (bearer token: authentication cached) | $rps | $p50 | $p99 | $bad |"
  read -r rps p50 p99 bad < <(run -s bench/graphql_me.lua "$URL/graphql")
  echo "| $r | POST /graphql me { organizations } (bearer: 2 queries, authentication cached) | $rps | $p50 | $p99 | $bad |"
done
