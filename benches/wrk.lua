-- wrk script for benches/bench.py. The request shape comes from the environment:
-- BENCH_MODE (baseline | get | list | create | create_idempotent | patch | mix), BENCH_KEY,
-- BENCH_USERS, BENCH_PATH, BENCH_RUN (unique per run).
local mode = os.getenv("BENCH_MODE") or "baseline"
local key = os.getenv("BENCH_KEY")
local users = tonumber(os.getenv("BENCH_USERS") or "1000")
local path = os.getenv("BENCH_PATH") or "/"
local run = os.getenv("BENCH_RUN") or "0"
local created = 0

local headers = {}
if key and key ~= "" then
  headers["Authorization"] = "Bearer " .. key
end
local json_headers = {}
for k, v in pairs(headers) do json_headers[k] = v end
json_headers["Content-Type"] = "application/json"
local idempotent_headers = {}
for k, v in pairs(json_headers) do idempotent_headers[k] = v end

local function get_user()
  return wrk.format("GET", "/api/v1/users/" .. math.random(1, users), headers)
end

local function patch_user()
  local body = '{"role":"Role ' .. math.random(1, 100000) .. '"}'
  return wrk.format("PATCH", "/api/v1/users/" .. math.random(1, users), json_headers, body)
end

request = function()
  if mode == "get" then
    return get_user()
  elseif mode == "create" or mode == "create_idempotent" then
    created = created + 1
    local tag = created .. ' ' .. math.random(1, 1000000)
    local body = '{"name":"Bench ' .. tag .. '","role":"Load"}'
    if mode == "create" then
      return wrk.format("POST", "/api/v1/users", json_headers, body)
    end
    -- A fresh key per request, as a client that retries safely sends one per logical create.
    idempotent_headers["Idempotency-Key"] = "bench-" .. run .. "-" .. tag:gsub(" ", "-")
    return wrk.format("POST", "/api/v1/users", idempotent_headers, body)
  elseif mode == "patch" then
    return patch_user()
  elseif mode == "mix" then
    if math.random(1, 10) == 1 then return patch_user() end
    return get_user()
  end
  return wrk.format("GET", path, headers)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"socket_errors":%d,"non_2xx":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
