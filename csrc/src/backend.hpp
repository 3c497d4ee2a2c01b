// The seam between the Engine (pool, chunking, thresholds, map output) and a backend that
// turns frames into model-resolution maps and scores.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "cdd/engine.hpp"
#include "manifest.hpp"

namespace cdd {
namespace detail {

/// One slot of the engine's pool: an OpenVINO InferRequest, a TensorRT execution context +
/// stream, or an AOTInductor model instance (+ stream on CUDA), with its own buffers. Used by one thread at a time.
class Worker {
public:
    virtual ~Worker() = default;
    /// Scores n <= max_batch validated frames: writes scores[0..n) and leaves the n
    /// model-resolution maps (n x H x W floats) at maps() until the next run().
    virtual void run(const ImageView* views, std::size_t n, float* scores) = 0;
    virtual const float* maps() const = 0;
};

/// OpenVINO: model.xml/.bin (or model.onnx) compiled for `options.device`; one worker per
/// stream. Fills the backend-specific fields of `info`.
std::vector<std::unique_ptr<Worker>> make_openvino_workers(const Manifest& m, const EngineOptions& options,
                                                           EngineInfo& info);

/// TensorRT: model.plan deserialised on a CUDA device; one execution context and stream per
/// worker. Only in builds with CDD_WITH_TENSORRT.
std::vector<std::unique_ptr<Worker>> make_tensorrt_workers(const Manifest& m, const EngineOptions& options,
                                                           EngineInfo& info);

/// AOTInductor: model.pt2 loaded by libtorch's package loader (CPU; CUDA with CDD_WITH_CUDA);
/// one loader whose container holds num_streams model instances, one worker per stream.
/// Refuses a package whose aoti.device or aoti.torch_version does not match. Only in builds
/// with CDD_WITH_AOTI; otherwise throws Unsupported.
std::vector<std::unique_ptr<Worker>> make_aoti_workers(const Manifest& m, const EngineOptions& options,
                                                       EngineInfo& info);

/// The anomaly-map kernel matching the manifest (model resolution, feature scales, settings).
kernels::AnomalyMap make_anomaly_map(const Manifest& m);

}  // namespace detail
}  // namespace cdd
