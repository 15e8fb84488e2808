-- wrk script: `{ controlPlane { id } }` through the management plane's gateway to a control
-- plane picked at random per request from QLEET_BENCH_CP_IDS (comma-separated ids), with an
-- API token (QLEET_BENCH_TOKEN).
local ids = {}
for id in string.gmatch(os.getenv("QLEET_BENCH_CP_IDS"), "[^,]+") do
  ids[#ids + 1] = id
end
math.randomseed(os.time())
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("QLEET_BENCH_TOKEN")
wrk.body = '{"query":"{ controlPlane { id } }"}'
request = function()
  return wrk.format(nil, "/cp/" .. ids[math.random(#ids)] .. "/graphql")
end
