-- wrk script: POST one small non-streaming chat completion, print a JSON summary.
-- Environment: BENCH_KEY (bearer key), BENCH_MODEL (default "bench"),
-- BENCH_MAX_TOKENS (default 16). Used by bench/run.py, scenario 1.

local key = os.getenv("BENCH_KEY") or "sk-bench"
local model = os.getenv("BENCH_MODEL") or "bench"
local max_tokens = tonumber(os.getenv("BENCH_MAX_TOKENS") or "16")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
wrk.body = string.format(
  '{"model":"%s","messages":[{"role":"system","content":"You are terse."},' ..
  '{"role":"user","content":"Say hello to the benchmark, briefly."}],"max_tokens":%d}',
  model, max_tokens)

-- One machine-readable line; run.py finds it by its prefix. Latencies in microseconds.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
