#!/usr/bin/env bash
# The soak benchmark (not part of the test command): builds the binary, fetches the test
# model, then load-tests/soak.py runs a private server through idle, ramp, soak and idle
# phases and prints RSS, open fds and p99 before, during and after.
# Usage: ops/soak.sh [MINUTES] [soak.py options...]   (MINUTES defaults to 10)
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/build-env.sh
minutes="${1:-10}"
shift || true
ops/setup.sh models >/dev/null
cargo build --bin inferno
exec python3 load-tests/soak.py --inferno-bin "$CARGO_TARGET_DIR/debug/inferno" \
    --model "${INFERNO_TEST_MODEL:-$PWD/models/gemma-3-270m-q4_k_m.gguf}" --minutes "$minutes" "$@"
