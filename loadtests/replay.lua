-- wrk script: replay pre-signed raw HTTP requests from a file, each exactly once.
--
--   wrk -t1 -c64 -d10s --latency -s loadtests/replay.lua http://127.0.0.1:8080 -- REQUESTS_FILE [THREADS]
--
-- The file holds length-prefixed raw requests ("%010d" byte count, then the request),
-- written by loadtests/requests_file.py. Thread k of T sends requests k, k+T, k+2T, ...
-- so no request is sent twice unless the file runs out; then it wraps around and
-- counts `wrapped` (the benchmark refuses such a run: a replayed nonce or a duplicate
-- CallUUID takes another code path and would distort the result). The script does no
-- crypto and no formatting: request() only returns a prebuilt string.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  local path = args[1]
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  local nthreads = tonumber(args[2] or "1")
  reqs = {}
  local pos, n, k = 1, 0, 0
  local size = #data
  while pos <= size do
    local len = tonumber(data:sub(pos, pos + 9))
    if k % nthreads == id then
      n = n + 1
      reqs[n] = data:sub(pos + 10, pos + 9 + len)
    end
    k = k + 1
    pos = pos + 10 + len
  end
  data = nil
  collectgarbage()
  count = n
  loaded_clock = os.clock()  -- process CPU time once this thread's file is loaded
  idx = 0
  sent = 0
  wrapped = 0
end

function request()
  idx = idx + 1
  if idx > count then
    idx = 1
    wrapped = wrapped + 1
  end
  sent = sent + 1
  return reqs[idx]
end

function done(summary, latency, requests)
  local total_sent, total_wrapped, loaded = 0, 0, 0
  for _, t in ipairs(threads) do
    total_sent = total_sent + t:get("sent")
    total_wrapped = total_wrapped + t:get("wrapped")
    loaded = math.max(loaded, t:get("loaded_clock"))
  end
  -- wrk's own CPU (all threads) while it was sending, without loading the files
  io.write(string.format("REPLAY sent=%d wrapped=%d cpu_s=%.3f\n", total_sent, total_wrapped, os.clock() - loaded))
  io.write(string.format(
    "REPLAY requests=%d duration_us=%d status_errors=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout))
  io.write(string.format("REPLAY mean_us=%.1f max_us=%d", latency.mean, latency.max))
  for _, p in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format(" p%s=%d", tostring(p), latency:percentile(p)))
  end
  io.write("\n")
end
