-- wrk script: POST {"n": N, "seed": S} as JSON, a different seed on every request, and print the
-- run's numbers as one JSON line (prefixed WRK_JSON) from done(), so nothing parses wrk's text.
-- Arguments (after `--` on wrk's command line): n, seed base, and optionally a body template: a
-- JSON body with one %d for the seed instead of {"n", "seed"}, or "GET" for a plain GET of the URL.
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local n, seed, step, template

function init(args)
  n = tonumber(args[1]) or 1
  template = args[3] or '{"n":' .. n .. ',"seed":%d}'
  if template == "GET" then
    return  -- wrk's own request: GET of the URL, headers from -H
  end
  -- threads start 2^28 seeds apart; seeds stay below 2^31 + n, inside the API's bound (2^32 - 1)
  seed = ((tonumber(args[2]) or 0) + id * 268435456) % 2147483648
  step = n
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  if template == "GET" then
    return wrk.format()
  end
  seed = (seed + step) % 2147483648
  return wrk.format(nil, nil, nil, string.format(template, seed))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%.1f,"mean":%.1f,"max":%.1f,"stdev":%.1f,' ..
    '"p50":%.1f,"p90":%.1f,"p95":%.1f,"p99":%.1f,"p999":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency:percentile(99.9)))
end
