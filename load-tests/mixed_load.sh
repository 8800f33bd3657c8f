#!/usr/bin/env bash
# Mixed load: authenticated reads while inference runs. Starts its own `inferno serve` (temp
# data dir, loopback, the test model, limits out of the way) and measures, one after the other:
#   1. reads alone: wrk GET /api/v1/models with an API key
#   2. inference alone: INFER_CONCURRENCY clients POST /api/v1/inference back to back
#   3. both at once
# then prints reads/s and p99, and inference requests, tokens/s, latency p50/p99 and errors,
# alone and mixed, with the ratios mixed / alone. Everything goes to 127.0.0.1 only, and every
# phase is bounded: wrk runs WRK_DURATION; the inference clients start no request after
# WRK_DURATION, nor more than INFER_MAX_REQUESTS.
#
# usage: load-tests/mixed_load.sh
# env:   WRK_THREADS (1) WRK_CONNECTIONS (16) WRK_DURATION (10s) INFER_CONCURRENCY (4)
#        INFER_MAX_TOKENS (32) INFER_MAX_REQUESTS (200) BENCH_JSONL (unset: FILE to append the
#        figures to as JSON lines, for ops/bench-all.sh)
# Needs wrk, curl and python3. Builds the dev-profile binary if needed (INFERNO_BIN to use
# another). The API key lives in a file of the temp dir and is never printed. Stops the server
# and removes the data dir on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${WRK_THREADS:-1}"
CONNS="${WRK_CONNECTIONS:-16}"
DURATION="${WRK_DURATION:-10s}"
CONCURRENCY="${INFER_CONCURRENCY:-4}"
MAX_TOKENS="${INFER_MAX_TOKENS:-32}"
MAX_REQUESTS="${INFER_MAX_REQUESTS:-200}"
source ops/build-env.sh
source load-tests/lib.sh
load_setup mixed-load
ops/fetch-model.sh models >/dev/null
ln -s "$PWD/models/gemma-3-270m-q4_k_m.gguf" "$work/models/tiny.gguf"
load_serve INFERNO_LIMITS__REQUESTS_PER_MINUTE=100000000 INFERNO_MODELS__PARALLEL="$CONCURRENCY" \
    INFERNO_MODELS__CTX_PER_SLOT=1024
token="$(load_login)"
key="$(load_key "$token" mixed-load '["read_models","run_inference"]')"
printf '%s' "$key" >"$work/key"
curl -fsS "$base/api/v1/models" -H "X-API-Key: $key" >/dev/null
# warm-up: the model loads on first use
curl -fsS -X POST "$base/api/v1/inference" -H "X-API-Key: $key" -H 'Content-Type: application/json' \
    -d '{"model":"tiny","prompt":"Hello","max_tokens":4}' >/dev/null

cat >"$work/read.lua" <<LUA
wrk.headers["X-API-Key"] = "$key"
LUA
reads() { # phase name
    echo "== $1: wrk -t$THREADS -c$CONNS -d$DURATION --latency GET /api/v1/models (X-API-Key)"
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$work/read.lua" "$base/api/v1/models" \
        | tee "$work/$1.txt" | sed -n '/Latency Distribution/,/Requests\/sec/p;/Non-2xx/p;/Socket errors/p'
}

reads reads-alone

seconds="$(python3 -c 'import re,sys; m=re.fullmatch(r"(\d+)(s|m)?", sys.argv[1]); print(int(m.group(1))*(60 if m.group(2)=="m" else 1))' "$DURATION")"
cat >"$work/infer.py" <<'PY'
import json, sys, threading, time, urllib.request
base, key_file, conc, max_tokens, max_requests, seconds = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
key = open(key_file).read().strip()
prompts = ["The capital of France is", "Write a haiku about queues.", "Count to ten:", "Once upon a time"]
lock, started, done = threading.Lock(), [0], []
deadline = time.monotonic() + seconds
def client(i):
    while time.monotonic() < deadline:
        with lock:
            if started[0] >= max_requests:
                return
            started[0] += 1
            n = started[0]
        body = json.dumps({"model": "tiny", "prompt": prompts[n % len(prompts)], "max_tokens": max_tokens}).encode()
        req = urllib.request.Request(f"{base}/api/v1/inference", data=body, method="POST",
                                     headers={"X-API-Key": key, "Content-Type": "application/json"})
        t = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=seconds + 60) as resp:
                tokens = json.load(resp)["usage"]["completion_tokens"]
            done.append((time.monotonic() - t, tokens, None))
        except Exception as e:  # noqa: BLE001 - counted
            done.append((time.monotonic() - t, 0, type(e).__name__))
start = time.monotonic()
threads = [threading.Thread(target=client, args=(i,)) for i in range(conc)]
for t in threads: t.start()
for t in threads: t.join()
wall = time.monotonic() - start
ok = sorted(d for d, _, e in done if e is None)
pick = lambda p: ok[min(len(ok) - 1, round((len(ok) - 1) * p))] * 1e3 if ok else None
print(json.dumps({"requests": len(done), "errors": sum(1 for *_, e in done if e), "wall_s": wall,
                  "tokens": sum(n for _, n, _ in done), "tokens_per_second": sum(n for _, n, _ in done) / wall,
                  "latency_ms_p50": pick(0.5), "latency_ms_p99": pick(0.99)}))
PY
infer() { # phase name
    echo "== $1: $CONCURRENCY clients POST /api/v1/inference (max_tokens $MAX_TOKENS) for $DURATION"
    python3 "$work/infer.py" "$base" "$work/key" "$CONCURRENCY" "$MAX_TOKENS" "$MAX_REQUESTS" "$seconds" \
        >"$work/$1.json"
}
infer infer-alone
infer infer-with-reads &
infer_pid=$!
sleep 1   # let every client reach the engine before the reads start
reads reads-with-inference
wait "$infer_pid"

python3 - "$work" "${BENCH_JSONL:-}" "$CONCURRENCY" "$MAX_TOKENS" <<'PY'
import json, re, sys
work, jsonl, conc, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def to_ms(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]
def parse(name):
    text = open(f"{work}/{name}.txt").read()
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return {"req/s": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
            "p50 ms": to_ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1)),
            "p99 ms": to_ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1)),
            "non-2xx": int(bad.group(1)) if bad else 0}
alone, mixed = parse("reads-alone"), parse("reads-with-inference")
infer = json.load(open(f"{work}/infer-with-reads.json"))
infer_alone = json.load(open(f"{work}/infer-alone.json"))
print()
print(f"{'GET /api/v1/models (API key)':<34} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
for label, r in (("alone", alone), (f"with {conc} inference clients", mixed)):
    print(f"{label:<34} {r['req/s']:>10.0f} {r['p50 ms']:>8.2f} {r['p99 ms']:>8.2f} {r['non-2xx']:>8}")
print(f"reads/s with inference / alone: {mixed['req/s'] / alone['req/s']:.2f}")
fmt = lambda v: "-" if v is None else f"{v:.0f}"
print()
print(f"{f'POST /api/v1/inference ({conc} clients)':<34} {'requests':>9} {'tokens/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
for label, r in (("alone", infer_alone), ("with the reads", infer)):
    print(f"{label:<34} {r['requests']:>9} {r['tokens_per_second']:>9.1f} {fmt(r['latency_ms_p50']):>8} "
          f"{fmt(r['latency_ms_p99']):>8} {r['errors']:>7}")
if infer_alone["tokens_per_second"]:
    print(f"inference tokens/s with reads / alone: {infer['tokens_per_second'] / infer_alone['tokens_per_second']:.2f}")
if alone["non-2xx"] or mixed["non-2xx"] or infer["errors"] or infer_alone["errors"]:
    print("WARNING: some requests failed; those figures do not measure success paths")
if jsonl:
    with open(jsonl, "a") as f:
        def figure(case, metric, value):
            if value is not None:
                f.write(json.dumps({"bench": "mixed", "case": case, "metric": metric,
                                    "subject": "inferno", "value": value}) + "\n")
        for metric in ("req/s", "p50 ms", "p99 ms", "non-2xx"):
            figure("reads alone (GET /api/v1/models)", metric, alone[metric])
            figure(f"reads with {conc} inference clients", metric, mixed[metric])
        figure(f"reads with {conc} inference clients", "req/s vs alone", mixed["req/s"] / alone["req/s"])
        for label, r in (("alone", infer_alone), ("with the reads", infer)):
            case = f"inference {label} ({conc} clients, max_tokens {max_tokens})"
            for metric, key in (("requests", "requests"), ("errors", "errors"), ("tokens/s", "tokens_per_second"),
                                ("latency p50 ms", "latency_ms_p50"), ("latency p99 ms", "latency_ms_p99")):
                figure(case, metric, r[key])
        if infer_alone["tokens_per_second"]:
            figure(f"inference with the reads ({conc} clients, max_tokens {max_tokens})", "tokens/s vs alone",
                   infer["tokens_per_second"] / infer_alone["tokens_per_second"])
PY
