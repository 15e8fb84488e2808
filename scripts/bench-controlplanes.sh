#!/usr/bin/env bash
# Measures per-tenant control planes (process runtime) against the release build:
#   1. createControlPlane -> READY time for N sequential control planes (with a breakdown from
#      the control_plane_events timestamps and the child's pid file);
#   2. resident memory of idle control-plane processes and of the management process;
#   3. QLEET_BENCH_BURST (100) created at once, timed until all are READY; then the rest up to
#      QLEET_BENCH_CONTROL_PLANES at once, and density with all of them running (RSS,
#      PostgreSQL connections per idle control plane once their pools have shrunk, backend
#      memory);
#   4. gateway overhead: `{ controlPlane { id } }` through POST /cp/<id>/graphql (to one control
#      plane, and to a random one of all) vs straight to a standalone control plane, same run,
#      interleaved rounds (wrk).
# PostgreSQL: by default a private, throw-away cluster (initdb in a temp dir, loopback port
# QLEET_BENCH_PG_PORT, max_connections QLEET_BENCH_PG_MAX_CONNECTIONS) so that 100+ control planes
# -- each holding connections -- do not exhaust a shared server; set QLEET_BENCH_DATABASE_URL
# (an admin URL, e.g. postgres://postgres@127.0.0.1:5432/postgres) to use an existing one.
# Prints a Markdown section on stdout; progress goes to stderr.
source "$(dirname "$0")/lib.sh"
ensure_apt wrk wrk

N_SEQ=${QLEET_BENCH_SEQUENTIAL:-20}
N_TOTAL=${QLEET_BENCH_CONTROL_PLANES:-100}
N_BURST=${QLEET_BENCH_BURST:-100}
PORT=${QLEET_BENCH_PORT:-18081}
CP_PORT=${QLEET_BENCH_CP_PORT:-18091}
DURATION=${QLEET_BENCH_DURATION:-10s}
CONNS=${QLEET_BENCH_CONNECTIONS:-64}
ROUNDS=${QLEET_BENCH_ROUNDS:-3}
PG_PORT=${QLEET_BENCH_PG_PORT:-55432}
PG_MAXC=${QLEET_BENCH_PG_MAX_CONNECTIONS:-400}
URL="http://127.0.0.1:$PORT"
WORK=$(mktemp -d /tmp/qleet-cpbench.XXXXXX)
chmod 755 "$WORK"
MGMT_DB=qleet_cpbench_mgmt
DIRECT_DB=qleet_cp_bench_direct

now_ms() { date +%s%3N; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) { print "n/a"; exit }
  if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
stats() { sort -n | awk '{ v[NR] = $1; s += $1 } END { if (NR == 0) { print "n/a n/a n/a"; exit }
  m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m, v[1], v[NR] }'; }
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
pss_kb() { awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }

# --- PostgreSQL ---------------------------------------------------------------------------------
PRIVATE_PG=0
if [ -n "${QLEET_BENCH_DATABASE_URL:-}" ]; then
  ADMIN=$QLEET_BENCH_DATABASE_URL
else
  PRIVATE_PG=1
  PGBIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
  RUNAS=()
  [ "$(id -u)" -eq 0 ] && { chown postgres "$WORK"; RUNAS=(runuser -u postgres --); }
  say "private PostgreSQL cluster in $WORK/pg (port $PG_PORT, max_connections $PG_MAXC)"
  "${RUNAS[@]}" "$PGBIN/initdb" -D "$WORK/pg" -U postgres -A trust >/dev/null
  "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w -o \
    "-c port=$PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK -c max_connections=$PG_MAXC" \
    start >/dev/null
  ADMIN="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
fi
sql() { psql "$ADMIN" -XAtqc "$1"; }
msql() { psql "${ADMIN%/*}/$MGMT_DB" -XAtqc "$1"; }

SERVER=""
DIRECT=""
cleanup() {
  set +e
  [ -n "$DIRECT" ] && kill "$DIRECT" 2>/dev/null && wait "$DIRECT" 2>/dev/null
  if [ -n "$SERVER" ]; then
    kill "$SERVER" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER" 2>/dev/null
    wait "$SERVER" 2>/dev/null
  fi
  # Children the management plane did not stop (pid files name them).
  for f in "$WORK"/data/run/*.pid; do
    [ -e "$f" ] || continue
    p=$(cat "$f")
    grep -qa QLEET_CP_ID "/proc/$p/environ" 2>/dev/null && kill -9 "$p" 2>/dev/null
  done
  if [ "$PRIVATE_PG" = 1 ]; then
    "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1
  else
    # Only the databases and roles this run created.
    for n in $(msql "select db_name from control_planes" 2>/dev/null) $DIRECT_DB; do
      sql "drop database if exists $n with (force)" 2>/dev/null
      sql "drop role if exists $n" 2>/dev/null
    done
    sql "drop database if exists $MGMT_DB with (force)" 2>/dev/null
  fi
  if [ -n "${QLEET_BENCH_KEEP:-}" ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

sql "drop database if exists $MGMT_DB with (force)"
sql "create database $MGMT_DB"
sql "drop database if exists $DIRECT_DB with (force)"
sql "create database $DIRECT_DB"

# --- Build and start ----------------------------------------------------------------------------
[ -n "${QLEET_BENCH_SKIP_BUILD:-}" ] || cargo build --release -p qleet -p qleet-control-plane >&2
BIN="$ROOT/${CARGO_TARGET_DIR:-target}/release/qleet"
CP_BIN="$ROOT/${CARGO_TARGET_DIR:-target}/release/qleet-control-plane"
say "starting qleet dev on $URL"
RUST_LOG=warn DATABASE_URL="${ADMIN%/*}/$MGMT_DB" QLEET_LISTEN="127.0.0.1:$PORT" \
  QLEET_DATA_DIR="$WORK/data" QLEET_DEFAULT_PLAN=bench \
  QLEET_PLANS='[{"id":"bench","name":"Bench","control_planes":null,"agents":null,"objects":null}]' QLEET_HIBERNATE_AFTER_SECS=0 \
  QLEET_CONTROL_PLANE_RETENTION_HOURS=0 "$BIN" dev >/dev/null 2>"$WORK/qleet.log" &
SERVER=$!
for _ in $(seq 300); do curl -fs "$URL/readyz" >/dev/null && break; sleep 0.1; done
curl -fs "$URL/readyz" >/dev/null || { cat "$WORK/qleet.log" >&2; die "qleet dev did not start"; }

COOKIE=$(curl -s -o /dev/null -D - -X POST "$URL/auth/dev" -d 'email=bench@example.test' |
  sed -n 's/^set-cookie: qleet_session=\([^;]*\).*/\1/ip')
gql() { curl -fs "$URL/graphql" -H "cookie: qleet_session=$COOKIE" -H "origin: $URL" \
  -H 'content-type: application/json' -d "$1"; }
gql '{"query":"mutation { createOrganization(slug: \"bench\", name: \"Bench\") { id } }"}' >/dev/null
TOKEN=$(gql '{"query":"mutation { createApiToken(org: \"bench\", name: \"bench\", role: OWNER) { token } }"}' |
  sed 's/.*"token":"\([^"]*\)".*/\1/')
[ -n "$TOKEN" ] || die "no API token"
export QLEET_BENCH_TOKEN=$TOKEN
tgql() { curl -fs "$URL/graphql" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d "$1"; }
create_cp() {
  tgql "{\"query\":\"mutation(\$o: String!, \$n: String!) { createControlPlane(org: \$o, name: \$n) { id status } }\",\"variables\":{\"o\":\"bench\",\"n\":\"$1\"}}" |
    sed -n 's/.*"id":"\([^"]*\)".*/\1/p'
}
cp_status() {
  tgql "{\"query\":\"query(\$o: String!, \$id: UUID!) { organization(slug: \$o) { controlPlane(id: \$id) { status } } }\",\"variables\":{\"o\":\"bench\",\"id\":\"$1\"}}" |
    sed -n 's/.*"status":"\([A-Z_]*\)".*/\1/p'
}

# --- 1. Sequential create -> READY --------------------------------------------------------------
say "1. $N_SEQ sequential control planes"
: >"$WORK/seq.ms"
IDS=()
for i in $(seq "$N_SEQ"); do
  t0=$(now_ms)
  id=$(create_cp "seq-$i")
  [ -n "$id" ] || die "createControlPlane failed"
  IDS+=("$id")
  st=""
  for _ in $(seq 3000); do # 20 ms polls, at most 60 s
    st=$(cp_status "$id")
    [ "$st" = READY ] || [ "$st" = FAILED ] && break
    sleep 0.02
  done
  t1=$(now_ms)
  [ "$st" = READY ] || die "control plane $id: $st"
  echo $((t1 - t0)) >>"$WORK/seq.ms"
  # Breakdown: queue (created -> provisioning), database (provisioning -> process spawned: role,
  # database, migrations), start (spawned -> ready event: process start + readiness polling).
  spawn=$(stat -c %.3Y "$WORK/data/run/$id.pid")
  msql "select round(extract(epoch from (p.at - c.created_at)) * 1000),
                round(($spawn - extract(epoch from p.at)) * 1000),
                round((extract(epoch from r.at) - $spawn) * 1000)
         from control_planes c
         join control_plane_events p on p.control_plane_id = c.id and p.to_status = 'provisioning'
         join control_plane_events r on r.control_plane_id = c.id and r.to_status = 'ready'
         where c.id = '$id'" | tr '|' ' ' >>"$WORK/seq.parts"
done
read -r seq_med seq_min seq_max < <(stats <"$WORK/seq.ms")
q_med=$(cut -d' ' -f1 "$WORK/seq.parts" | median)
d_med=$(cut -d' ' -f2 "$WORK/seq.parts" | median)
s_med=$(cut -d' ' -f3 "$WORK/seq.parts" | median)

# --- 2. Idle memory -----------------------------------------------------------------------------
sleep 5
child_pids() { for f in "$WORK"/data/run/*.pid; do cat "$f"; echo; done | grep -v '^$'; }
idle_rss=$(for p in $(child_pids); do rss_kb "$p"; done | median)
mgmt_rss=$(rss_kb "$SERVER")
tenant_conns_seq=$(sql "select count(*) from pg_stat_activity where usename like 'qleet_cp_%'")

# --- 3. Many at once ----------------------------------------------------------------------------
# create_many PREFIX COUNT: asks for COUNT control planes back to back (8 clients in parallel).
create_many() {
  export -f tgql create_cp
  export TOKEN URL
  seq "$2" | xargs -P 8 -I{} bash -c 'echo "$(create_cp "$1")"' _ "$1-{}" >>"$WORK/ids" ||
    die "creating control planes failed"
}
# wait_ready N: until N control planes are READY (none FAILED); at most 20 min.
peak_conns=0
wait_ready() {
  for _ in $(seq 12000); do
    ready=$(msql "select count(*) from control_planes where status = 'ready'")
    failed=$(msql "select count(*) from control_planes where status = 'failed'")
    c=$(sql "select count(*) from pg_stat_activity where usename like 'qleet_cp_%'")
    [ "$c" -gt "$peak_conns" ] && peak_conns=$c
    [ "$ready" -ge "$1" ] || [ "$failed" -gt 0 ] && break
    sleep 0.1
  done
  [ "$ready" -ge "$1" ] || say "only $ready of $1 READY ($failed failed)"
}
say "3. $N_BURST control planes at once"
: >"$WORK/ids"
t0=$(now_ms)
create_many burst "$N_BURST"
t_burst_created=$(now_ms)
wait_ready $((N_SEQ + N_BURST))
t_burst_ready=$(now_ms)
burst_ready=$ready
rest=$((N_TOTAL - N_SEQ - N_BURST))
t_rest0=$(now_ms)
if [ "$rest" -gt 0 ]; then
  say "3. $rest more at once (total $N_TOTAL)"
  create_many many "$rest"
  wait_ready "$N_TOTAL"
fi
t_ready=$(now_ms)
IDS+=($(cat "$WORK/ids"))
# Idle: the control planes' pools close idle connections after QLEET_CP_POOL_IDLE_SECONDS (10).
sleep 20
n_children=$(child_pids | wc -l)
child_pids | while read -r p; do rss_kb "$p"; done >"$WORK/many.rss"
total_rss=$(awk '{ s += $1 } END { print s }' "$WORK/many.rss")
many_med=$(median <"$WORK/many.rss")
mgmt_rss_many=$(rss_kb "$SERVER")
pg_total=$(sql "select count(*) from pg_stat_activity where backend_type = 'client backend'")
pg_tenant=$(sql "select count(*) from pg_stat_activity where usename like 'qleet_cp_%'")
pg_mgmt=$(sql "select count(*) from pg_stat_activity where datname = '$MGMT_DB'")
max_conn=$(sql "show max_connections")
reserved=$(sql "show superuser_reserved_connections")
sql "select pid from pg_stat_activity where usename like 'qleet_cp_%'" >"$WORK/be.pids"
be_pss=$(while read -r p; do pss_kb "$p"; done <"$WORK/be.pids" | median)
be_rss=$(while read -r p; do rss_kb "$p"; done <"$WORK/be.pids" | median)
shared_max=$(psql postgres://postgres@127.0.0.1:5432/postgres -XAtqc "show max_connections" 2>/dev/null || echo n/a)

# --- 4. Gateway overhead ------------------------------------------------------------------------
say "4. gateway vs direct"
ADMIN_TOKEN=$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 40)
export QLEET_BENCH_CP_TOKEN=$ADMIN_TOKEN
RUST_LOG=warn DATABASE_URL="${ADMIN%/*}/$DIRECT_DB" QLEET_CP_ID=$(cat /proc/sys/kernel/random/uuid) \
  QLEET_CP_ADMIN_TOKEN="$ADMIN_TOKEN" QLEET_CP_LISTEN="127.0.0.1:$CP_PORT" \
  "$CP_BIN" >/dev/null 2>"$WORK/direct.log" &
DIRECT=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$CP_PORT/readyz" >/dev/null && break; sleep 0.1; done
GW_ID=${IDS[0]}
QLEET_BENCH_CP_IDS=$(IFS=,; echo "${IDS[*]}")
export QLEET_BENCH_CP_IDS
curl -fs "$URL/cp/$GW_ID/graphql" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"query":"{ controlPlane { id } }"}' | grep -q "$GW_ID" || die "gateway request failed"
curl -fs "http://127.0.0.1:$CP_PORT/graphql" -H "Authorization: Bearer $ADMIN_TOKEN" \
  -H 'content-type: application/json' -d '{"query":"{ controlPlane { id } }"}' | grep -q '"id"' ||
  die "direct request failed"
run() {
  wrk -t2 -c"$CONNS" -d"$DURATION" --latency "$@" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 }
    /Non-2xx/ { bad = $NF }
    END { printf "%s %s %s %s\n", rps, p50, p99, (bad == "" ? 0 : bad) }'
}
: >"$WORK/direct.w"; : >"$WORK/gw.w"; : >"$WORK/gwr.w"
ROWS=""
for r in $(seq "$ROUNDS"); do
  read -r rps p50 p99 bad < <(run -s bench/cp_direct.lua "http://127.0.0.1:$CP_PORT/graphql")
  echo "$rps $p50 $p99" >>"$WORK/direct.w"
  ROWS+="| $r | direct: POST 127.0.0.1:$CP_PORT/graphql (standalone, admin token) | $rps | $p50 | $p99 | $bad |"$'\n'
  read -r rps p50 p99 bad < <(run -s bench/cp_gateway.lua "$URL/cp/$GW_ID/graphql")
  echo "$rps $p50 $p99" >>"$WORK/gw.w"
  ROWS+="| $r | gateway: POST /cp/<id>/graphql (API token), one control plane | $rps | $p50 | $p99 | $bad |"$'\n'
  read -r rps p50 p99 bad < <(run -s bench/cp_gateway_random.lua "$URL")
  echo "$rps $p50 $p99" >>"$WORK/gwr.w"
  if [ "$bad" != 0 ]; then
    # Say what the refusals were: a few requests to random control planes, their answers.
    for id in $(printf '%s\n' "${IDS[@]}" | shuf -n 20); do
      curl -s -o /dev/null -w "%{http_code} $id\n" "$URL/cp/$id/graphql" -H "Authorization: Bearer $TOKEN" \
        -H 'content-type: application/json' -d '{"query":"{ controlPlane { id } }"}'
    done | grep -v '^200' >&2 || true
  fi
  ROWS+="| $r | gateway: a random one of the $N_TOTAL control planes per request | $rps | $p50 | $p99 | $bad |"$'\n'
done
col() { cut -d' ' -f"$2" "$1" | median; }
d_rps=$(col "$WORK/direct.w" 1); d_p50=$(col "$WORK/direct.w" 2); d_p99=$(col "$WORK/direct.w" 3)
g_rps=$(col "$WORK/gw.w" 1); g_p50=$(col "$WORK/gw.w" 2); g_p99=$(col "$WORK/gw.w" 3)
r_rps=$(col "$WORK/gwr.w" 1); r_p50=$(col "$WORK/gwr.w" 2); r_p99=$(col "$WORK/gwr.w" 3)
direct_rss=$(rss_kb "$DIRECT")
cpu_note=$(nproc)

# --- Report -------------------------------------------------------------------------------------
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
mem_kb=$(awk '/^MemTotal/ { print $2 }' /proc/meminfo)
per_cp_kb=$(awk -v a="$many_med" -v b="$be_pss" 'BEGIN { printf "%d", a + b }')
fit_mem=$(awk -v m="$mem_kb" -v mg="$mgmt_rss_many" -v p="$per_cp_kb" 'BEGIN { printf "%d", (m - mg) / p }')
conn_per_cp=$(awk -v t="$pg_tenant" -v n="$n_children" 'BEGIN { printf "%.2f", (n ? t / n : 0) }')
fit_conn() { awk -v m="$1" -v r="$reserved" -v g="$pg_mgmt" -v c="$conn_per_cp" 'BEGIN { printf "%d", (m - r - g) / c }'; }
cat <<EOF
## Control planes (process runtime): provisioning, memory, density, gateway

Command: \`scripts/bench-controlplanes.sh\` (release build; \`qleet dev\` with
\`QLEET_DEFAULT_PLAN=bench \
  QLEET_PLANS='[{"id":"bench","name":"Bench","control_planes":null,"agents":null,"objects":null}]' QLEET_HIBERNATE_AFTER_SECS=0 QLEET_CONTROL_PLANE_RETENTION_HOURS=0\`;
$( [ "$PRIVATE_PG" = 1 ] && echo "a private PostgreSQL cluster started by the script (\`max_connections=$PG_MAXC\`, otherwise defaults)" || echo "PostgreSQL at \`${ADMIN%%@*}@…\`" );
$cpu_note cores; wrk \`-t2 -c$CONNS -d$DURATION --latency\`, $ROUNDS interleaved rounds). Run on $(date -u +%Y-%m-%d).

### 1. createControlPlane → READY, $N_SEQ sequential control planes

Client-side (mutation sent → first poll, every 20 ms, that sees \`READY\`):

| median ms | min ms | max ms |
| ---: | ---: | ---: |
| $seq_med | $seq_min | $seq_max |

Medians of the server-side phases (from \`control_plane_events\` and the child's pid file):
queue (created → \`PROVISIONING\`) $q_med ms; database (role, database, control-plane migrations,
until the child is spawned) $d_med ms; start (spawn → answers \`/readyz\`, polled every 50 ms)
$s_med ms.

### 2. Resident memory, idle

| process | VmRSS |
| --- | ---: |
| one idle control plane (median of $N_SEQ) | $(mib "$idle_rss") MiB |
| management process (\`qleet dev\`) with $N_SEQ control planes | $(mib "$mgmt_rss") MiB |
| management process with $n_children control planes | $(mib "$mgmt_rss_many") MiB |
| standalone control plane after the wrk rounds | $(mib "$direct_rss") MiB |

With $N_SEQ idle control planes, tenant roles held $tenant_conns_seq PostgreSQL connections.

### 3. $N_BURST at once, then $N_TOTAL running

$N_BURST created at once (8 clients in parallel) after the first $N_SEQ: creating them took
$((t_burst_created - t0)) ms; all $burst_ready READY **$((t_burst_ready - t0)) ms** after the first create.
Then $rest more at once: all $N_TOTAL READY $((t_ready - t_rest0)) ms after the first of those
($(awk -v a=$((t_ready - t_rest0)) -v n=$((rest > 0 ? rest : 1)) 'BEGIN { printf "%.0f", a / n }') ms per control plane).
At most $peak_conns PostgreSQL connections were held by control planes at once while they started
(sampled every 0.1 s). Measured 20 s after the last was READY (idle pools closed):

| measure | value |
| --- | ---: |
| control-plane processes running | $n_children |
| total VmRSS of the children | $(mib "$total_rss") MiB |
| per child, median VmRSS | $(mib "$many_med") MiB |
| PostgreSQL client connections (all) | $pg_total |
| … held by tenant roles (control planes) | $pg_tenant ($conn_per_cp per control plane) |
| … held by the management pool | $pg_mgmt |
| PostgreSQL backend per tenant connection, median PSS (RSS) | $(mib "$be_pss") MiB ($(mib "$be_rss") MiB) |
| \`show max_connections\` (this cluster; reserved for superusers: $reserved) | $max_conn |
| \`show max_connections\` on the shared 127.0.0.1:5432 server | $shared_max |

Extrapolation for this machine ($(mib "$mem_kb") MiB RAM), idle control planes:

- memory: (RAM − management process) / (child RSS + its PostgreSQL backend's PSS) =
  $(mib "$((mem_kb - mgmt_rss_many))") / $(mib "$per_cp_kb") MiB ≈ **$fit_mem** control planes;
- connections: (max_connections − reserved − management pool) / $conn_per_cp per control plane ≈
  **$(fit_conn "$max_conn")** with max_connections=$max_conn$( [ "$shared_max" != n/a ] && echo ", **$(fit_conn "$shared_max")** with the shared server's $shared_max" ).

### 4. Gateway overhead: \`{ controlPlane { id } }\`

| round | route | requests/s | p50 ms | p99 ms | non-2xx |
| --- | --- | ---: | ---: | ---: | ---: |
${ROWS}
Medians:

| route | requests/s | p50 ms | p99 ms |
| --- | ---: | ---: | ---: |
| direct to a control plane | $d_rps | $d_p50 | $d_p99 |
| through the gateway, one control plane | $g_rps | $g_p50 | $g_p99 |
| through the gateway, a random one of $N_TOTAL | $r_rps | $r_p50 | $r_p99 |
| gateway (one) / direct | $(awk -v a="$g_rps" -v b="$d_rps" 'BEGIN { printf "%.3f", a / b }') | +$(awk -v a="$g_p50" -v b="$d_p50" 'BEGIN { printf "%.2f ms", a - b }') | $(awk -v a="$g_p99" -v b="$d_p99" 'BEGIN { printf "%.1f×", a / b }') |
EOF
