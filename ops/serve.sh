#!/usr/bin/env bash
# Quick start: set up, build and serve Inferno on http://127.0.0.1:8080 with the embedded
# defaults (data in ./data, models in ./models). On first start the admin password is
# printed once (set INFERNO_ADMIN_PASSWORD to choose it). Extra arguments go to `serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/build-env.sh
ops/setup.sh models
# --all-targets resolves features exactly as the test command does, so llama.cpp (about 10
# minutes on 2 cores) is compiled once for both quick-start commands, not once each.
cargo build --all-targets
# Requests may omit "model": the test model is the default unless one is configured.
export INFERNO_MODELS__DEFAULT="${INFERNO_MODELS__DEFAULT:-gemma-3-270m-q4_k_m}"
exec "$CARGO_TARGET_DIR/debug/inferno" serve --models-dir models "$@"
