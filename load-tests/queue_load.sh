#!/usr/bin/env bash
# Durable enqueue throughput through the API: starts its own `inferno serve` (temp data dir,
# loopback, the test model in its models dir, limits out of the way), pauses the queue so
# that nothing runs meanwhile, and runs wrk with 64 connections POSTing /api/v1/jobs with an
# API key. Every 202 is a job whose `job.queued` event and payload were fsynced before the
# answer. Prints jobs/s, latency, and checks the count against the server's queue.
#
# usage: load-tests/queue_load.sh      env: WRK_THREADS (2) WRK_CONNECTIONS (64) WRK_DURATION (10s)
# Needs wrk, curl and python3. Builds the dev-profile binary if needed (INFERNO_BIN to use
# another). Stops the server and removes the data dir on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${WRK_THREADS:-2}"
CONNS="${WRK_CONNECTIONS:-64}"
DURATION="${WRK_DURATION:-10s}"
source ops/build-env.sh
command -v wrk >/dev/null || { echo "queue_load: installing wrk"; apt-get install -y wrk; }
if [[ -z "${INFERNO_BIN:-}" ]]; then
    cargo build --bin inferno
    INFERNO_BIN="$CARGO_TARGET_DIR/debug/inferno"
fi
ops/fetch-model.sh models >/dev/null

work="$(mktemp -d -t inferno-queue-load.XXXXXX)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
password="queue-load-admin-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
mkdir -p "$work/models"
ln -s "$PWD/models/gemma-3-270m-q4_k_m.gguf" "$work/models/tiny.gguf"
INFERNO_ADMIN_PASSWORD="$password" \
INFERNO_LIMITS__REQUESTS_PER_MINUTE=100000000 \
INFERNO_QUEUE__MAX_DEPTH=100000000 \
INFERNO_QUEUE__MAX_QUEUED_PER_PRINCIPAL=100000000 \
    "$INFERNO_BIN" serve --bind "127.0.0.1:$port" --data-dir "$work/data" --models-dir "$work/models" \
    >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 120); do
    curl -fsS "$base/ready" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { echo "queue_load: server exited:"; cat "$work/server.log"; exit 1; }
    sleep 0.5
done

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }
token="$(curl -fsS -X POST "$base/api/v1/auth/login" -H 'Content-Type: application/json' \
    -d "{\"username\":\"admin\",\"password\":\"$password\"}" | json_field token)"
key="$(curl -fsS -X POST "$base/api/v1/auth/api-keys" -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $token" \
    -d '{"name":"queue-load","permissions":["run_inference","manage_queue"]}' | json_field key)"
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
python3 - "$work/wrk.txt" "$queued" <<'PY'
import re, sys
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
PY
