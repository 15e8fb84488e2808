-- wrk script: an authenticated GraphQL `me { organizations { slug } }` query.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("QLEET_BENCH_TOKEN")
wrk.body = '{"query":"{ me { organizations { organization { slug } } } }"}'
