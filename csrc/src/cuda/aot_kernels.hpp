// Table of the Triton kernels compiled ahead of time (kernels/aot.py) and embedded at build
// time (csrc/cmake/embed_aot.py). Empty in builds without them (CDD_AOT_KERNELS undefined).
#pragma once

#include <cstddef>

namespace cdd {
namespace cuda {

struct AotKernel {
    const char* name;         ///< variant name, e.g. "cdd_map_add"
    int arch;                 ///< compute capability of the cubin, e.g. 90
    const char* entry;        ///< kernel symbol in the module
    int threads;              ///< block size (num_warps * 32)
    int shared_bytes;         ///< dynamic shared memory
    int num_params;           ///< PTX parameters, scratch pointers included
    int extra_scratch;        ///< trailing scratch pointers Triton appends (pass 0)
    int global_scratch_bytes; ///< global scratch the kernel needs (0 for every kernel so far)
    int tile[7];              ///< BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_C, BLOCK_P, ROW_CHUNK, BLOCK (0: n/a)
    const unsigned char* cubin;
    std::size_t cubin_size;
    const unsigned char* ptx;  ///< NUL-terminated
    std::size_t ptx_size;
};

enum Tile { kBlockM = 0, kBlockN, kBlockK, kBlockC, kBlockP, kRowChunk, kBlock };

extern const AotKernel kAotKernels[];
extern const std::size_t kAotKernelCount;

}  // namespace cuda
}  // namespace cdd
