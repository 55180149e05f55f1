#!/usr/bin/env bash
# Installs Triton's own perf_analyzer into build/perf_analyzer/ for the HTTP/gRPC parity test
# (tests/server/test_http_triton_json.py): the binary ships inside the tritonclient 2.41.0 wheel
# (later wheels dropped it); it links libb64 (Debian's libb64-0d) and the CUDA runtime
# (libcudart.so.12, from the nvidia-cuda-runtime-cu12 wheel; no GPU is used or needed).
# Nothing is installed system-wide: the wheels and the .deb are unpacked into that folder.
# Usage: scripts/install_perf_analyzer.sh [PYTHON]   (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}
target=$PWD/build/perf_analyzer
if [[ -x $target/bin/perf_analyzer && -e $target/lib/libb64.so.0d && -e $target/lib/libcudart.so.12 ]]; then
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$target/bin" "$target/lib"
"$python" -m pip download -q --disable-pip-version-check --no-deps -d "$work" \
    tritonclient==2.41.0 nvidia-cuda-runtime-cu12==12.9.79
(cd "$work" && python3 -m zipfile -e tritonclient-2.41.0-*.whl triton)
(cd "$work" && python3 -m zipfile -e nvidia_cuda_runtime_cu12-*.whl cuda)
install -m 755 "$work"/triton/tritonclient-2.41.0.data/data/bin/perf_analyzer "$target/bin/"
install -m 644 "$work"/cuda/nvidia/cuda_runtime/lib/libcudart.so.12 "$target/lib/"
# apt-get download needs no root, only package lists; refresh them once if they are missing.
if ! (cd "$work" && apt-get download -q libb64-0d >/dev/null 2>&1); then
    if [[ $(id -u) -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
    fi
    (cd "$work" && apt-get download -q libb64-0d >/dev/null)
fi
dpkg-deb -x "$work"/libb64-0d_*.deb "$work/deb"
install -m 644 "$work"/deb/usr/lib/*/libb64.so.0d "$target/lib/"
if LD_LIBRARY_PATH=$target/lib ldd "$target/bin/perf_analyzer" | grep "not found" >&2; then
    echo "install_perf_analyzer: perf_analyzer still misses a library" >&2
    exit 1
fi
echo "perf_analyzer installed in $target"
