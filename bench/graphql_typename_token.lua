-- wrk script: `{ __typename }` with a bearer token: authentication, no resolver queries.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("QLEET_BENCH_TOKEN")
wrk.body = '{"query":"{ __typename }"}'
