#!/usr/bin/env bash
# Durable enqueue throughput through the API: starts its own `inferno serve` (temp data dir,
# loopback, the test model in its models dir, limits out of the way), pauses the queue so
# that nothing runs meanwhile, and runs wrk with 64 connections POSTing /api/v1/jobs with an
# API key. Every 202 is a job whose `job.queued` event and payload were fsynced before the
# answer. Prints jobs/s, latency, and checks the count against the server's queue.
#
# usage: load-tests/queue_load.sh      env: WRK_THREADS (2) WRK_CONNECTIONS (64) WRK_DURATION (10s)
#                                           BENCH_JSONL (unset: FILE to append the figures to as
#                                           JSON lines, for ops/bench-all.sh)
# Needs wrk, curl and python3. Builds the dev-profile binary if needed (INFERNO_BIN to use
# another). Stops the server and removes the data dir on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${WRK_THREADS:-2}"
CONNS="${WRK_CONNECTIONS:-64}"
DURATION="${WRK_DURATION:-10s}"
source ops/build-env.sh
source load-tests/lib.sh
load_setup queue-load
ops/fetch-model.sh models >/dev/null
ln -s "$PWD/models/gemma-3-270m-q4_k_m.gguf" "$work/models/tiny.gguf"
load_serve INFERNO_LIMITS__REQUESTS_PER_MINUTE=100000000 INFERNO_QUEUE__MAX_DEPTH=100000000 \
    INFERNO_QUEUE__MAX_QUEUED_PER_PRINCIPAL=100000000
token="$(load_login)"
key="$(load_key "$token" queue-load '["run_inference","manage_queue"]')"
curl -fsS -X POST "$base/api/v1/queue/pause" -H "X-API-Key: $key" >/dev/null

cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"model":"tiny","prompt":"Write a haiku about durable queues.","max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "$key"
LUA
echo "== wrk -t$THREADS -c$CONNS -d$DURATION --latency -s post.lua POST /api/v1/jobs (queue paused)"
wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$work/post.lua" "$base/api/v1/jobs" | tee "$work/wrk.txt"
queued="$(curl -fsS "$base/api/v1/queue" -H "X-API-Key: $key" | python3 -c '
import json, sys
v = json.load(sys.stdin)
print(sum(s["count"] for s in v["by_status"] if s["status"] == "queued"))')"
python3 - "$work/wrk.txt" "$queued" "${BENCH_JSONL:-}" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
queued = int(sys.argv[2])
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
total = int(re.search(r"(\d+) requests in", text).group(1))
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
bad = int(bad.group(1)) if bad else 0
print()
print(f"durable enqueue through the API: {rps:.0f} jobs/s ({total} requests, {bad} non-2xx); "
      f"the server holds {queued} queued jobs")
if bad:
    print("WARNING: some responses were not 202; the figure does not measure only accepted jobs")
if sys.argv[3]:
    def to_ms(v):
        m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]
    case = "POST /api/v1/jobs (queue paused)"
    figures = [("jobs/s", rps), ("requests", total), ("non-2xx", bad), ("queued on the server", queued)]
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", text, re.M)
        if m:
            figures.append((f"p{p} ms", to_ms(m.group(1))))
    with open(sys.argv[3], "a") as f:
        for metric, value in figures:
            f.write(json.dumps({"bench": "queue", "case": case, "metric": metric,
                                "subject": "inferno", "value": value}) + "\n")
PY
