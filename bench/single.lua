-- wrk script: single-message ingest, one raw string with 4 readings per request.
-- Usage: wrk ... -s bench/single.lua URL -- <api_key> <base_epoch_seconds> <device_tag> [devices_per_thread]
-- Every request gets a (device, ts) pair no other request has: `devices_per_thread` devices
-- (default 16) per wrk thread (the tag and thread number are in the id) and a per-thread
-- counter in milliseconds on top of the base time, so nothing the server stores is a duplicate.
local counter = 0
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  local key = args[1] or ""
  base = tonumber(args[2]) or os.time()
  prefix = (args[3] or "w") .. "t" .. tid .. "d"
  ndevices = tonumber(args[4]) or 16
  headers = {}
  headers["Content-Type"] = "text/plain"
  headers["Authorization"] = "Bearer " .. key
end

function request()
  counter = counter + 1
  local c = counter
  headers["X-Device-Id"] = prefix .. (c % ndevices)
  local body = string.format("roll:%.2f,pitch:%.2f,alt:%.1f,bat_v:%.2f,ts:%.3f",
    (c % 360) - 179.75, (c % 90) - 44.5, 100 + (c % 500) / 10, 11.1 + (c % 13) / 10, base + c / 1000)
  return wrk.format("POST", nil, headers, body)
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
