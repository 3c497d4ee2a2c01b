// GPU pre- and post-processing for the TensorRT backend: the Triton kernels compiled ahead of
// time (kernels/aot.py) launched through the CUDA driver API, with the launch rules of their
// Python launchers (kernels/preprocess.py fused_preprocess, kernels/anomaly_map.py
// fused_anomaly_map): same tables, same grids, same workspace layout.
//
// Runs on an NVIDIA GPU only; csrc/tests/test_cuda_kernels.cpp checks it against the CPU
// kernels there (the GPU check records the outcome).
#pragma once

#include <cuda.h>

#include <array>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cdd/image.hpp"
#include "cdd/kernels.hpp"
#include "driver.hpp"

namespace cdd {
namespace cuda {

struct AotKernel;

/// True when this build embeds AOT kernels (CDD_AOT_KERNELS).
bool aot_kernels_embedded() noexcept;

/// The embedded kernels loaded into the current context: the cubin built for the device's
/// compute capability, else the PTX of the highest architecture not above it (JIT).
class KernelSet {
public:
    explicit KernelSet(int compute_capability);
    ~KernelSet();
    KernelSet(const KernelSet&) = delete;
    KernelSet& operator=(const KernelSet&) = delete;

    struct Fn {
        CUfunction fn = nullptr;
        const AotKernel* info = nullptr;
    };
    /// Throws cdd::Error(Unsupported) naming the kernel when it is not embedded.
    const Fn& get(const std::string& name) const;
    bool has(const std::string& name) const { return fns_.count(name) != 0; }

    /// cuLaunchKernel with `args` (pointers to each argument value), the kernel's block size,
    /// shared memory, and 0 for the scratch pointers Triton appends.
    void launch(const Fn& f, unsigned gx, unsigned gy, unsigned gz, std::vector<void*> args, CUstream s) const;

private:
    std::vector<CUmodule> modules_;
    std::map<std::string, Fn> fns_;
};

/// Geometry of one feature scale: (C, h, w) and the element type.
struct FeatureGeometry {
    int channels = 0, height = 0, width = 0;
    kernels::DType dtype = kernels::DType::Float32;
};

/// A device feature pair of one scale: (B, C, h, w) contiguous teacher and student.
struct DeviceFeature {
    CUdeviceptr teacher = 0, student = 0;
};

/// The fused anomaly map on the GPU for one model resolution and feature geometry, batches
/// of 1..max_batch. Everything is allocated and uploaded at construction, so run() only
/// enqueues kernels: it may be captured into a CUDA graph. One instance per stream.
class GpuAnomalyMap {
public:
    GpuAnomalyMap(const KernelSet& ks, int H, int W, std::vector<FeatureGeometry> scales,
                  const kernels::MapSettings& settings, int max_batch, int sm_count);
    /// maps: (B, H, W) fp32, scores: (B,) fp32, both device memory; enqueued on `stream`.
    void run(const DeviceFeature* levels, int batch, CUdeviceptr maps, CUdeviceptr scores, CUstream stream) const;

private:
    struct Ops {  // one sandwich launch's operators on the device
        DeviceBuffer a, bt, win;
        std::vector<std::array<int, 6>> static_rows;  // per scale: h, w, a_off, bt_off, rwin_off, cwin_off
    };
    struct Plan {  // per batch size
        std::vector<int> splits, c_per_split;
        std::vector<long long> x_off;
        DeviceBuffer meta;
    };
    Ops upload(const std::vector<std::pair<std::vector<double>, std::vector<double>>>& mats,
               const std::vector<std::pair<int, int>>& in_sizes, int bm, int bn);
    const KernelSet& ks_;
    int H_, W_, max_batch_;
    kernels::MapSettings settings_;
    std::vector<FeatureGeometry> scales_;
    std::vector<const KernelSet::Fn*> pass1_;
    const KernelSet::Fn* sandwich_ = nullptr;
    const KernelSet::Fn* blur_fn_ = nullptr;
    Ops first_, blur_;
    DeviceBuffer blur_meta_;
    std::vector<Plan> plans_;  // index batch - 1
    DeviceBuffer ws_, tile_max_, prod_;
};

/// uint8 frames -> normalised (3, h, w) fp32 planes on the GPU (the "taps" kernel).
class GpuPreprocess {
public:
    GpuPreprocess(const KernelSet& ks, int h, int w, const kernels::Normalization& norm);
    /// Uploads the frame (its rows as they are, stride included) into `staging` and writes
    /// (3, h, w) fp32 at `out`; enqueued on `stream`. The view must stay valid until the
    /// stream has passed this point (the copy is from pageable memory, so it is synchronous).
    void run(const ImageView& view, DeviceBuffer& staging, CUdeviceptr out, CUstream stream);

private:
    struct Tables {
        DeviceBuffer start, weights;
        int taps = 0;
    };
    const Tables& tables(int in, int out, std::map<int, Tables>& cache);
    const KernelSet& ks_;
    int h_, w_;
    DeviceBuffer affine_;
    std::map<int, Tables> rows_, cols_;  // by input size
};

}  // namespace cuda
}  // namespace cdd
