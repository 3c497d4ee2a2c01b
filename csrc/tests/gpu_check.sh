#!/usr/bin/env bash
# GPU check of the native runtime's CUDA side (issue 5), for a machine with an NVIDIA GPU:
# builds csrc/tests/test_cuda_kernels straight from the sources with nvcc and the host
# compiler (no CMake needed) and runs it: the Triton AOT kernels launched from C++ through the
# dlopen'ed driver against the CPU kernels, CUDA-graph replay, and GPU post-processing timing.
#
#   csrc/tests/gpu_check.sh AOT_KERNELS_CPP [BUILD_DIR]
#
# AOT_KERNELS_CPP: the source csrc/cmake/embed_aot.py writes from
# `python -m cdd_engine.kernels.aot --arch 90 --out DIR` (made on any machine, no GPU needed).
#
# Scope: the C++ CUDA kernels only. The C++ engine on a GPU (the AOTInductor loader of a library
# built with -DCDD_WITH_AOTI=ON -DCDD_WITH_CUDA=ON, TensorRT) is checked end to end, parity and
# images/s against the Python path, by the "native" rows of benchmarks/engine_gpu_check.py.
set -euo pipefail
AOT_CPP=$(readlink -f "$1")
BUILD=${2:-/tmp/cdd_gpu_check}
cd "$(dirname "$0")/../.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
# cuda.h: next to nvcc, or in the usual toolkit locations (nvcc may be a wrapper script)
CUDA_INC=""
for d in "${CUDA_HOME:-}" "$(dirname "$(dirname "$(readlink -f "$NVCC")")")" /usr/local/cuda /usr/local/cuda-*; do
  for sub in include targets/x86_64-linux/include; do
    if [ -n "$d" ] && [ -f "$d/$sub/cuda.h" ]; then CUDA_INC="$d/$sub"; break 2; fi
  done
done
[ -n "$CUDA_INC" ] || { echo "cuda.h not found: set CUDA_HOME" >&2; exit 2; }
CXX=${CXX:-g++}
mkdir -p "$BUILD"
INC=(-Icsrc/include -Icsrc/src -Icsrc/src/cuda -isystem "$CUDA_INC")
DEFS=(-DNDEBUG -DCDD_WITH_CUDA -DCDD_AOT_KERNELS)
echo "nvcc: $("$NVCC" --version | tail -1); host compiler: $("$CXX" --version | head -1)"
pids=()
for f in image preprocess anomaly_map anomaly_map_naive; do
  "$CXX" -std=c++17 -O3 -pthread "${DEFS[@]}" "${INC[@]}" -c "csrc/src/$f.cpp" -o "$BUILD/$f.o" & pids+=($!)
done
"$CXX" -std=c++17 -O0 "${DEFS[@]}" "${INC[@]}" -c "$AOT_CPP" -o "$BUILD/aot_kernels.o" & pids+=($!)
"$CXX" -std=c++17 -O2 -pthread "${DEFS[@]}" "${INC[@]}" -c csrc/tests/test_cuda_kernels.cpp -o "$BUILD/test.o" & pids+=($!)
for f in driver gpu_kernels; do  # the CUDA-side host code, compiled by nvcc as CUDA sources
  "$NVCC" -std=c++17 -O2 -x cu "${DEFS[@]}" "${INC[@]}" -c "csrc/src/cuda/$f.cpp" -o "$BUILD/$f.o" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
"$NVCC" -o "$BUILD/test_cuda_kernels" "$BUILD"/*.o -ldl -lpthread
echo "built $BUILD/test_cuda_kernels"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$BUILD/test_cuda_kernels"
echo "C++ CUDA kernels checked; the engine check (Python and C++ runtimes): python benchmarks/engine_gpu_check.py --out DIR"
