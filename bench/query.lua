-- wrk script: read queries against the generated data set, a random device per request.
-- Usage: wrk ... -s bench/query.lua URL -- <api_key> <kind: query|aggregate> <device_prefix> <devices>
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  local key = args[1] or ""
  kind = args[2] or "query"
  prefix = args[3] or "q"
  devices = tonumber(args[4]) or 1
  math.randomseed(1234 + 7919 * tid)
  headers = {}
  headers["Authorization"] = "Bearer " .. key
end

function request()
  local d = string.format("%s%03d", prefix, math.random(0, devices - 1))
  local path
  if kind == "aggregate" then
    path = "/telemetry/aggregate?metric=alt&bucket=1m&device_id=" .. d
  else
    path = "/telemetry/query?limit=100&device_id=" .. d
  end
  return wrk.format("GET", path, headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
