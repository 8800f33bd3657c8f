#!/usr/bin/env bash
# Set up and run every check: formatting, clippy (warnings are errors), and all tests
# (unit, integration against the real server, end-to-end with the real model, NATS against
# the nats-server on 127.0.0.1:4222, which ops/nats.sh starts when none answers, cluster
# mode against the PostgreSQL on 127.0.0.1:5432, which ops/postgres.sh starts likewise).
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/build-env.sh
INFERNO_SETUP_TESTS=1 ops/setup.sh models
ops/nats.sh
export INFERNO_TEST_POSTGRES="$(ops/postgres.sh)"
export INFERNO_TEST_MODEL="${INFERNO_TEST_MODEL:-$PWD/models/gemma-3-270m-q4_k_m.gguf}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
log="$(mktemp)"
# The secret-leak scan: the harness records every secret and everything the servers wrote
# here, ops/nats_capture.py every NATS message; ops/leak_scan.py checks them after the run.
export INFERNO_LEAK_DIR="$(mktemp -d)"
python3 ops/nats_capture.py "$INFERNO_LEAK_DIR/nats.bin" & capture=$!
trap 'kill $capture 2>/dev/null || true; rm -rf "$log" "$INFERNO_LEAK_DIR"' EXIT
set +e
cargo test --all-targets --no-fail-fast -- --test-threads 2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
echo "== the API suites again, each server a cluster node on the shared log (INFERNO_TEST_CLUSTER)"
INFERNO_TEST_CLUSTER="$INFERNO_TEST_POSTGRES" cargo test --no-fail-fast \
  --test auth --test escalation --test permissions --test sessions --test audit_api \
  --test restart --test transparency --test upgrade --test runtime_config \
  -- --test-threads 2 2>&1 | tee -a "$log"
cluster_status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] && status=$cluster_status
# Each of those servers made a database of its own.
psql "$INFERNO_TEST_POSTGRES/postgres" -qtAc \
  "SELECT 'DROP DATABASE ' || quote_ident(datname) || ' WITH (FORCE);' FROM pg_database WHERE datname LIKE 'inferno_suite_%'" \
  | psql "$INFERNO_TEST_POSTGRES/postgres" -q >/dev/null || true
echo "== cargo test --doc"
cargo test --doc 2>&1 | tee -a "$log"
doc_status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] && status=$doc_status
echo "== fuzz targets (short run)"
ops/fuzz.sh short
fuzz_status=$?
[ "$status" -eq 0 ] && status=$fuzz_status
echo "== secret-leak scan"
kill $capture 2>/dev/null || true
python3 ops/leak_scan.py "$INFERNO_LEAK_DIR" tests | tee -a "$log"
leak_status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] && status=$leak_status
set -e
# One closing line with the totals over every test binary.
echo
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
