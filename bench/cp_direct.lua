-- wrk script: `{ controlPlane { id } }` straight to a standalone control plane
-- (POST /graphql) with its admin token (QLEET_BENCH_CP_TOKEN).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("QLEET_BENCH_CP_TOKEN")
wrk.body = '{"query":"{ controlPlane { id } }"}'
