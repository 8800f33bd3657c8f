#!/usr/bin/env bash
# The fuzz targets of fuzz/ (cargo fuzz, libFuzzer), each over the committed seed corpus
# fuzz/corpus/<target> plus a working corpus outside the clone
# ($HOME/.cache/inferno/fuzz-corpus/<target>, where libFuzzer keeps what it finds).
#
#   ops/fuzz.sh build          build every target
#   ops/fuzz.sh short [SECS]   each target for SECS seconds (default 5): the test command's run
#   ops/fuzz.sh long [SECS]    each target for SECS seconds (default 600): the benchmark-like run
#
# A crash (panic, abort, a leak of the input's size) fails the run and leaves the input in
# fuzz/artifacts/<target>/. Prints the executions of each target and the total.
# Built with the dev profile and without a sanitizer (`--sanitizer none`: the code under
# test has no unsafe of its own; libFuzzer still catches panics, aborts, timeouts and
# out-of-memory) into $HOME/.cache/inferno/fuzz-target, a target dir of its own: the
# coverage instrumentation changes the flags, so llama.cpp is built there once as well.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-short}"
case "$mode" in
  short) secs="${2:-5}" ;;
  long) secs="${2:-600}" ;;
  build) secs=0 ;;
  *) echo "usage: ops/fuzz.sh build|short [SECS]|long [SECS]" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR="$HOME/.cache/inferno/fuzz-target"
# cargo-fuzz passes nightly-only flags; RUSTC_BOOTSTRAP lets the stable toolchain take them.
export RUSTC_BOOTSTRAP=1
unset RUSTFLAGS
# Errors that capture a backtrace (std's, when RUST_BACKTRACE is set) would cost the request
# targets 100x their speed; panics still print theirs.
export RUST_LIB_BACKTRACE=0
if ! cargo fuzz --version 2>/dev/null | grep -q "0.13.2"; then
  echo "fuzz: installing cargo-fuzz 0.13.2"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
targets=(event_decode canonical_encode gguf_header api_key jwt inference_request chat_request)
cargo fuzz build --dev --sanitizer none
[ "$mode" = build ] && exit 0

total=0
for t in "${targets[@]}"; do
  work="$HOME/.cache/inferno/fuzz-corpus/$t"
  mkdir -p "$work" "fuzz/artifacts/$t"
  log="$(mktemp)"
  if ! cargo fuzz run --dev --sanitizer none "$t" "$work" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
      -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/)"
    rm -f "$log"
    exit 1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  rm -f "$log"
  echo "fuzz: $t: ${runs:-0} executions in ${secs} s, no crash"
  total=$((total + ${runs:-0}))
done
echo "fuzz: ${#targets[@]} targets, $total executions, no crash"
