-- wrk script: `{ controlPlane { id } }` through the management plane's gateway
-- (POST /cp/<id>/graphql) with an API token (QLEET_BENCH_TOKEN).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("QLEET_BENCH_TOKEN")
wrk.body = '{"query":"{ controlPlane { id } }"}'
