#!/usr/bin/env bash
# Set up and run every check: formatting, clippy (warnings are errors), and all tests
# (unit, integration against the real server, end-to-end with the real model).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inferno/target}"
ops/setup.sh models
export INFERNO_TEST_MODEL="${INFERNO_TEST_MODEL:-$PWD/models/gemma-3-270m-q4_k_m.gguf}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
cargo test --all-targets -- --test-threads 2
