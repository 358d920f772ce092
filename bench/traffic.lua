-- wrk script for the reliability runs (bench/reliability.py): single-image samples or a mix of
-- every kind of request, optionally paced, counting answers by status and checking that every
-- 429 carries Retry-After. Prints one JSON line (prefixed WRK_JSON) from done().
-- Arguments (after `--`): kind (samples | mixed), mean delay per connection in ms (0 = closed
-- loop), seed base, path of a PNG to upload to /encode (mixed only).
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local kind, delay_ms, seed, requests, i
counts = {}
no_retry_after = 0

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function init(args)
  kind = args[1] or "samples"
  delay_ms = tonumber(args[2]) or 0
  seed = ((tonumber(args[3]) or 0) + id * 268435456) % 2147483648
  math.randomseed(seed + 1)
  i = id
  local json = {["Content-Type"] = "application/json"}
  if kind == "samples" then
    requests = {function(s)
      return wrk.format("POST", "/v1/models/fashion-gan/samples", json, string.format('{"n":1,"seed":%d}', s))
    end}
  else
    local png = read_file(args[4])
    local zeros = "[" .. string.rep("0.0,", 15) .. "0.0]"
    requests = {
      function(s) return wrk.format("POST", "/v1/models/fashion-gan/samples", json, string.format('{"n":1,"seed":%d}', s)) end,
      function(s) return wrk.format("POST", "/v1/models/fashion-vae/samples", json,
        string.format('{"n":4,"seed":%d,"format":"json","include_latents":true}', s)) end,
      function(s) return wrk.format("GET", string.format("/v1/models/fashion-gan/samples.png?n=4&seed=%d&label=Bag", s)) end,
      function(s) return wrk.format("POST", "/v1/models/fashion-vae/decode", json,
        '{"latents":[' .. zeros .. '],"labels":"Dress"}') end,
      function(s) return wrk.format("POST", "/v1/models/fashion-gan/interpolate", json,
        string.format('{"start":{"seed":%d},"end":{"seed":%d},"steps":4,"format":"gif"}', s, s + 1)) end,
      function(s) return wrk.format("POST", "/v1/models/fashion-vae/encode?label=Sneaker", {["Content-Type"] = "image/png"}, png) end,
      function(s) return wrk.format("GET", "/v1/models") end,
      function(s) return wrk.format("GET", "/readyz") end,
    }
  end
end

function request()
  seed = (seed + 8) % 2147483648
  i = i + 1
  return requests[(i % #requests) + 1](seed)
end

function delay()
  if delay_ms <= 0 then return 0 end
  return delay_ms * (0.5 + math.random())  -- mean delay_ms, jittered so connections do not align
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  if status == 429 and headers["retry-after"] == nil and headers["Retry-After"] == nil then
    no_retry_after = no_retry_after + 1
  end
end

function done(summary, latency, reqs)
  local total, missing = {}, 0
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("counts")) do total[status] = (total[status] or 0) + n end
    missing = missing + t:get("no_retry_after")
  end
  local parts = {}
  for status, n in pairs(total) do table.insert(parts, string.format('"%d":%d', status, n)) end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"statuses":{%s},"no_retry_after":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%.1f,"p99":%.1f,"max":%.1f}}\n',
    summary.requests, summary.duration, table.concat(parts, ","), missing,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(99), latency.max))
end
