-- wrk script for the load benchmark: POSTs one prebuilt multipart body (file $BENCH_BODY, content type
-- $BENCH_CONTENT_TYPE) on every request, counts responses by HTTP status, and writes a JSON summary with latency
-- percentiles (microseconds) to $BENCH_RESULT when the run ends.

local body_path = os.getenv("BENCH_BODY")
local handle = assert(io.open(body_path, "rb"), "cannot open BENCH_BODY " .. tostring(body_path))
wrk.method = "POST"
wrk.body = handle:read("*a")
handle:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
-- an API key, for servers that need one (benchmarks/auth_overhead.py); servers without access control ignore it
local api_key = os.getenv("BENCH_API_KEY")
if api_key and api_key ~= "" then
  wrk.headers["X-API-Key"] = api_key
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    local t = thread:get("statuses")
    for status, n in pairs(t) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  local p = {}
  for _, q in ipairs({50, 90, 95, 99, 99.9}) do
    table.insert(p, string.format('"%s": %d', tostring(q), latency:percentile(q)))
  end
  local e = summary.errors
  local out = assert(io.open(os.getenv("BENCH_RESULT"), "w"))
  out:write(string.format(
    '{"duration_us": %d, "requests": %d, "bytes": %d, "statuses": {%s}, "latency_us": {"mean": %.1f, ' ..
    '"max": %d, "percentiles": {%s}}, "socket_errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"timeout": %d, "status": %d}}\n',
    summary.duration, summary.requests, summary.bytes, table.concat(parts, ", "), latency.mean, latency.max,
    table.concat(p, ", "), e.connect, e.read, e.write, e.timeout, e.status))
  out:close()
end
