# Sourced by the ops scripts (serve, test, bench) so that they all build with the same flags and
# share one build of llama.cpp (about 10 minutes on 2 cores; a change of flags rebuilds it).
#
# CARGO_TARGET_DIR: outside the clone, $HOME/.cache/inferno/target, unless already set.
#
# RUSTFLAGS, unless already set: `.cargo/config.toml` builds for x86-64-v3 (AVX2, FMA, F16C,
# BMI2: the instruction set of llama.cpp's published builds; Intel Haswell, AMD Zen and
# later). When this CPU also has AVX-VNNI, add it: llama.cpp's int8 dot products then use it
# (measured here: 2-3% more throughput at 4 and 8 concurrent requests). AVX-512
# (`target-cpu=native`) is deliberately not used: on the development machine (AMD Zen 5) the
# AVX2 build of llama.cpp decoded 8 concurrent sequences 1.16x as fast as its AVX-512 build
# (load-tests/HISTORY.md, "Build flags"). Set RUSTFLAGS yourself to choose otherwise.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inferno/target}"
if [[ -z "${RUSTFLAGS:-}" && "$(uname -m)" == x86_64 ]] && grep -qw avx_vnni /proc/cpuinfo 2>/dev/null; then
    export RUSTFLAGS="-C target-cpu=x86-64-v3 -C target-feature=+avxvnni"
fi
