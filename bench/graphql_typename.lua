-- wrk script: anonymous `{ __typename }`: GraphQL parsing and execution, no database.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"query":"{ __typename }"}'
