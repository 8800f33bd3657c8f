#!/usr/bin/env bash
# Inference benchmark, side by side in one run: Inferno's engine in-process (engine_bench),
# Inferno over HTTP (`inferno serve`), and llama.cpp's own server (PyPI `xllamacpp`), with the
# same model, threads, slots, total context and prompts. All three stay loaded for the whole
# run and take turns phase by phase (never two generating at once); prints a table of tokens/s
# and TTFT with the ratios between the subjects, and the paired ratio of each pass (read the
# ratios: the machine may be shared and noisy).
#
# usage: ops/bench-inference.sh [extra args for load-tests/bench_inference.py]
#   e.g. ops/bench-inference.sh --max-tokens 64 --rounds 2 --json-out /tmp/bench.json
#        ops/bench-inference.sh --stream [extra args for load-tests/bench_stream.py]
#   --stream: the streaming benchmark instead (SSE vs the JSON path vs llama.cpp's server
#   streaming, single and 8 concurrent; then 50 SSE consumers of one job, checked for loss)
#   --prefix: the prompt-prefix cache benchmark instead (TTFT of a ~1,000-token shared system
#   prompt plus a question, cold and warm, beside llama.cpp's server with cache_prompt: true;
#   load-tests/bench_prefix_cache.py)
# env:   BENCH_THREADS (2), BENCH_PARALLEL (8), BENCH_CTX_PER_SLOT (1024), BENCH_MAX_TOKENS (128),
#        BENCH_XLLAMACPP (wheel: the prebuilt PyPI wheel, AVX2; source: built from the PyPI
#        sdist with the instruction set Inferno's llama.cpp is built with (ops/build-env.sh),
#        about 8 minutes once per instruction set),
#        BENCH_VENV ($HOME/.cache/inferno/bench-venv, or bench-venv-source-<instruction set>),
#        CARGO_TARGET_DIR ($HOME/.cache/inferno/target)
#
# Idempotent: builds (dev profile) `inferno` and the `engine_bench` example, fetches the test
# model, creates the venv and installs xllamacpp only when missing. Every process it starts
# is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

source ops/build-env.sh
XLLAMACPP="${BENCH_XLLAMACPP:-wheel}"
XLLAMACPP_VERSION="2026.10.11549"
# llama.cpp's CMake options for the instruction set Inferno's build uses (from RUSTFLAGS, else
# .cargo/config.toml's x86-64-v3), so that BENCH_XLLAMACPP=source compares like with like
rustflags="${RUSTFLAGS:-$(sed -n 's/^rustflags = \[\(.*\)\]/\1/p' .cargo/config.toml | tr -d '",')}"
if [[ "$rustflags" == *target-cpu=native* ]]; then
    isa=native
    isa_cmake="-DGGML_NATIVE=ON"
else
    isa=x86-64-v3
    isa_cmake="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    if [[ "$rustflags" == *+avxvnni* ]]; then
        isa=x86-64-v3-avxvnni
        isa_cmake+=" -DGGML_AVX_VNNI=ON"
    fi
fi
case "$XLLAMACPP" in
    wheel) VENV="${BENCH_VENV:-$HOME/.cache/inferno/bench-venv}" ;;
    source) VENV="${BENCH_VENV:-$HOME/.cache/inferno/bench-venv-source-$isa}" ;;
    *) echo "bench-inference: BENCH_XLLAMACPP must be wheel or source" >&2; exit 2 ;;
esac
MODEL="models/gemma-3-270m-q4_k_m.gguf"

ops/fetch-model.sh models
cargo build --bin inferno --example engine_bench

if ! "$VENV/bin/python" -c 'import xllamacpp' 2>/dev/null; then
    echo "bench-inference: installing xllamacpp ($XLLAMACPP) into $VENV"
    python3 -m venv "$VENV"
    if [[ "$XLLAMACPP" == source ]]; then
        # Inferno's instruction set; without the parts llama.cpp would fetch from GitHub
        # (BoringSSL for HTTPS, llguidance), which the benchmark does not use
        echo "bench-inference: building llama.cpp's server for $isa ($isa_cmake)"
        CMAKE_ARGS="$isa_cmake -DLLAMA_BUILD_BORINGSSL=OFF -DLLAMA_LLGUIDANCE=OFF" NPROC="$(nproc)" \
            "$VENV/bin/pip" install --quiet --no-binary xllamacpp "xllamacpp==$XLLAMACPP_VERSION"
    else
        "$VENV/bin/pip" install --quiet "xllamacpp==$XLLAMACPP_VERSION"
    fi
fi
echo "bench-inference: xllamacpp $("$VENV/bin/python" -c 'import xllamacpp; print(xllamacpp.__version__)')"

child=""
pidfile="$(mktemp -t inferno-bench-pids.XXXXXX)"
export BENCH_PIDFILE="$pidfile"
cleanup() {
    if [[ -n "$child" ]] && kill -0 "$child" 2>/dev/null; then
        # the python driver starts each server in its own session and stops it itself;
        # SIGTERM lets it run its cleanup, SIGKILL if it does not finish
        kill -TERM "$child" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$child" 2>/dev/null || break; sleep 1; done
        kill -KILL "$child" 2>/dev/null || true
    fi
    # servers the driver started (each leads its own process group), in case it was killed hard
    while read -r pid; do
        [[ -n "$pid" ]] && kill -KILL -- "-$pid" 2>/dev/null || true
    done <"$pidfile"
    rm -f "$pidfile"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

common=(
    --inferno-bin "$CARGO_TARGET_DIR/debug/inferno"
    --model "$MODEL"
    --threads "${BENCH_THREADS:-2}"
    --parallel "${BENCH_PARALLEL:-8}"
    --ctx-per-slot "${BENCH_CTX_PER_SLOT:-1024}"
    --max-tokens "${BENCH_MAX_TOKENS:-128}"
)
if [[ "${1:-}" == --stream ]]; then
    shift
    "$VENV/bin/python" load-tests/bench_stream.py "${common[@]}" "$@" &
elif [[ "${1:-}" == --prefix ]]; then
    shift
    "$VENV/bin/python" load-tests/bench_prefix_cache.py --inferno-bin "$CARGO_TARGET_DIR/debug/inferno" \
        --model "$MODEL" --threads "${BENCH_THREADS:-2}" "$@" &
else
    "$VENV/bin/python" load-tests/bench_inference.py "${common[@]}" \
        --engine-bench-bin "$CARGO_TARGET_DIR/debug/examples/engine_bench" "$@" &
fi
child=$!
wait "$child"
