#!/usr/bin/env bash
# Every benchmark in one command, then BENCHMARKS.md from their figures.
#
#   inference  ops/bench-inference.sh           (Inferno in-process / HTTP / llama.cpp's server)
#   stream     ops/bench-inference.sh --stream  (SSE / JSON / llama.cpp's server streaming)
#   prefix     ops/bench-inference.sh --prefix  (prompt-prefix cache TTFT, cold and warm)
#   sse        load-tests/sse_load.py           (many SSE consumers of job streams)
#   mixed      load-tests/mixed_load.sh         (authenticated reads beside inference)
#   auth       load-tests/auth_load.sh          (wrk: /health vs /auth/me with a key, a JWT)
#   queue      load-tests/queue_load.sh         (wrk: durable enqueue through the API)
#   events     cargo run --example events_bench (event log, Merkle tree, verify, replay)
#   cluster    cargo run --example cluster_bench (shared log in PostgreSQL: 1-3 nodes vs embedded)
#   soak       load-tests/soak.py (RSS, fds, p99 before/during/after 10 minutes of mixed load)
#
# Each writes its usual output to RESULTS/NAME.log and its figures as JSON lines to
# RESULTS/NAME.jsonl; RESULTS/machine.jsonl describes the machine and build, and
# RESULTS/status.jsonl which benchmarks passed. A benchmark that fails is recorded as failed
# and the others still run. Then ops/bench-report.py renders the report.
#
# usage: ops/bench-all.sh [RESULTS]   (default $HOME/.cache/inferno/bench-results/<UTC time>)
# env:   BENCH_ONLY   comma-separated subset of the names above (default: all)
#        BENCH_QUICK  1: short runs of each (seconds, not minutes), to check the plumbing
#        BENCH_REPORT where the report goes (default: BENCHMARKS.md in the repository root
#                     after a full run, RESULTS/BENCHMARKS.md after a quick or partial one)
# The full run takes about 30 minutes on 2 cores and loads the whole machine: run it on a
# quiet one. Everything it starts listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/build-env.sh

ALL="inference stream prefix sse mixed auth queue events cluster soak"
ONLY="${BENCH_ONLY:-${ALL// /,}}"
QUICK="${BENCH_QUICK:-0}"
RESULTS="${1:-$HOME/.cache/inferno/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}"
# Only a full run replaces the repository's BENCHMARKS.md; a quick or partial one reports
# into its results dir.
if [[ "$QUICK" == 1 || -n "${BENCH_ONLY:-}" ]]; then
    REPORT="${BENCH_REPORT:-$RESULTS/BENCHMARKS.md}"
else
    REPORT="${BENCH_REPORT:-$PWD/BENCHMARKS.md}"
fi
for name in ${ONLY//,/ }; do
    [[ " $ALL " == *" $name "* ]] || { echo "bench-all: unknown benchmark $name (one of: $ALL)" >&2; exit 2; }
done
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
echo "bench-all: results in $RESULTS$([[ "$QUICK" == 1 ]] && echo " (BENCH_QUICK=1)")"

ops/fetch-model.sh models >/dev/null
cargo build --bin inferno
export INFERNO_BIN="$CARGO_TARGET_DIR/debug/inferno"
BENCH_QUICK="$QUICK" python3 ops/bench-report.py --collect-machine >"$RESULTS/machine.jsonl"
: >"$RESULTS/status.jsonl"

if [[ "$QUICK" == 1 ]]; then
    wrk_duration=2s; wrk_rounds=1; events_n=20000; cluster_n=20; soak_minutes=0.5
    inference_args=(--max-tokens 16 --rounds 1 --passes 1)
    prefix_args=(--rounds 2)
    stream_args=(--max-tokens 16 --rounds 1 --passes 1 --consumers 10)
    sse_args=(--jobs 2 --consumers 5 --max-tokens 16)
    mixed_env=(WRK_DURATION=3s INFER_MAX_TOKENS=16)
else
    wrk_duration=8s; wrk_rounds=5; events_n=1000000; cluster_n=200; soak_minutes=10
    inference_args=(--max-tokens 64 --passes 6)
    prefix_args=(--rounds 5)
    stream_args=(--passes 3)
    sse_args=(--jobs 4 --consumers 25 --max-tokens 64)
    mixed_env=(WRK_DURATION=10s)
fi

bench_inference() { ops/bench-inference.sh "${inference_args[@]}" --jsonl-out "$1"; }
bench_stream() { ops/bench-inference.sh --stream "${stream_args[@]}" --jsonl-out "$1"; }
bench_prefix() { ops/bench-inference.sh --prefix "${prefix_args[@]}" --jsonl-out "$1"; }
bench_sse() {
    python3 load-tests/sse_load.py --inferno-bin "$INFERNO_BIN" --model models/gemma-3-270m-q4_k_m.gguf \
        "${sse_args[@]}" --jsonl-out "$1"
}
bench_mixed() { env "${mixed_env[@]}" BENCH_JSONL="$1" load-tests/mixed_load.sh; }
bench_auth() { WRK_DURATION="$wrk_duration" WRK_ROUNDS="$wrk_rounds" BENCH_JSONL="$1" load-tests/auth_load.sh; }
bench_queue() { WRK_DURATION="$wrk_duration" BENCH_JSONL="$1" load-tests/queue_load.sh; }
bench_events() { EVENTS_BENCH_JSONL="$1" cargo run --example events_bench -- "$events_n"; }
bench_cluster() {
    CLUSTER_BENCH_POSTGRES="${INFERNO_TEST_POSTGRES:-$(ops/postgres.sh)}" EVENTS_BENCH_JSONL="$1" \
        cargo run --example cluster_bench -- "$cluster_n"
}
bench_soak() {
    python3 load-tests/soak.py --inferno-bin "$INFERNO_BIN" --model models/gemma-3-270m-q4_k_m.gguf \
        --minutes "$soak_minutes" --jsonl-out "$1"
}

failed=0
for name in $ALL; do
    [[ ",$ONLY," == *",$name,"* ]] || continue
    echo "== bench-all: $name (load average $(cut -d' ' -f1 /proc/loadavg))"
    : >"$RESULTS/$name.jsonl"
    start=$SECONDS
    set +e
    "bench_$name" "$RESULTS/$name.jsonl" 2>&1 | tee "$RESULTS/$name.log"
    status=${PIPESTATUS[0]}
    set -e
    took=$((SECONDS - start))
    if [[ "$status" -eq 0 ]]; then
        result="ok ($took s)"
    else
        result="FAILED (exit $status after $took s; see $name.log)"
        failed=1
    fi
    echo "bench-all: $name $result"
    python3 -c 'import json, sys; print(json.dumps({"info": "bench " + sys.argv[1], "value": sys.argv[2]}))' \
        "$name" "$result" >>"$RESULTS/status.jsonl"
done

python3 ops/bench-report.py "$RESULTS" --out "$REPORT"
echo "bench-all: wrote $REPORT from $RESULTS"
exit "$failed"
