// cdd::Engine: score uint8 camera frames with an engine directory built by cdd_engine.build().
//
//   cdd::EngineOptions opt;
//   opt.num_threads = 4;
//   cdd::Engine engine("/path/to/engine_dir", opt);
//   cdd::ImageView view{frame_ptr, width, height, stride_bytes, cdd::PixelFormat::BGR8};
//   std::vector<cdd::Result> r = engine.score(&view, 1);
//   if (r[0].is_anomalous) { ... r[0].map ... }
//
// The pipeline per image: uint8 frame -> antialiased bilinear resize to the model size ->
// normalise (docs/engine_format.md) -> network (OpenVINO on CPU, TensorRT on NVIDIA GPUs)
// -> fused anomaly map of docs/anomaly_map.md -> score = max of the map.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cdd/error.hpp"
#include "cdd/image.hpp"

namespace cdd {

/// Which anomaly map score() returns beside the score.
enum class MapOutput : int {
    None = 0,       ///< verdict only: no map copied out (the map is still computed for the score)
    ModelSize = 1,  ///< the map at the model resolution (image_size of engine.json)
    InputSize = 2,  ///< the map resized to each input frame's width x height (antialiased bilinear)
};

struct EngineOptions {
    /// "CPU" (OpenVINO, the default), "cuda" or "cuda:N" (TensorRT; needs a build with
    /// CDD_WITH_TENSORRT), or any other OpenVINO device name (e.g. "GPU" for an Intel GPU).
    /// An aoti engine (CDD_WITH_AOTI) runs on "CPU" or "cuda[:N]", whichever its package was
    /// compiled for.
    std::string device = "CPU";
    /// CPU threads for inference and for the pre/post-processing kernels; 0 = all cores.
    int num_threads = 0;
    /// Inference requests (OpenVINO) / execution contexts (TensorRT) in the pool: how many
    /// score() calls from different threads run the network at the same time. With more than
    /// one, a call of several frames also uses them all: one frame per request, in turns.
    int num_streams = 1;
    /// Replaces the engine's calibrated threshold.
    std::optional<float> threshold;
    /// Scales the calibrated threshold instead: threshold = calibrated / sensitivity, so
    /// 2 flags more (half the threshold) and 0.5 flags less. Must be > 0; ignored when
    /// `threshold` is set.
    std::optional<float> sensitivity;
    /// Default map output of score(); a ScoreOptions argument overrides it per call.
    MapOutput map = MapOutput::ModelSize;
    /// Check the sha256 of every model file listed in engine.json (a few ms per 10 MB).
    bool verify_hashes = true;
    /// OpenVINO: compile a static-shape network per batch size met (faster on CPUs; up to 3
    /// of them, the rest share a dynamic-batch one) instead of one dynamic-batch network.
    bool static_shapes = true;
    /// OpenVINO: append the per-pixel cosine distances (step 1 of the anomaly map) to the
    /// network, so that only three small maps leave it (faster: the six feature outputs
    /// cost OpenVINO ~9% more time); false reads the features and runs the whole fused map
    /// in C++.
    bool distances_in_network = true;
    /// With more than one stream: the most frames per inference request when a call of several
    /// frames is split over the streams (a batch of 8 on 2 streams at 2: 4 requests of 2, in
    /// turns; never fewer requests than streams, so a call of 4 at 4 still uses both), at most
    /// max_batch. 0 = by precision: 4 for INT8 engines, 1 otherwise (kInt8FramesPerRequest;
    /// measured on a 2-core CPU, benchmarks/RESULTS.md "Frames per request": an INT8 frame costs
    /// 2-4x less, so a request's fixed costs weigh more, and its int8 activations are a quarter of
    /// the size; fp32 frames gain nothing from grouping). Ignored with one stream (requests of up
    /// to max_batch).
    int frames_per_request = 0;
};

/// frames_per_request = 0 on an INT8 engine (EngineOptions::frames_per_request).
constexpr int kInt8FramesPerRequest = 4;

/// Per-call settings of score().
struct ScoreOptions {
    MapOutput map = MapOutput::ModelSize;
};

struct Result {
    float score = 0.f;          ///< max of the anomaly map at the model resolution
    float threshold = 0.f;      ///< the threshold in force (calibrated or overridden)
    bool is_anomalous = false;  ///< score > threshold
    int map_width = 0;          ///< 0 when no map was requested
    int map_height = 0;
    std::vector<float> map;     ///< row-major map_height x map_width, empty when not requested
};

/// One feature tensor the network returns (batch dimension left out).
struct FeatureInfo {
    std::string name;  ///< teacher_0..2, student_0..2
    int channels = 0, height = 0, width = 0;
    std::string dtype;  ///< "float32" or "float16"
};

/// Read-only facts about a loaded engine.
struct EngineInfo {
    std::string engine_dir;
    std::string backend;      ///< backend that runs here: "openvino", "tensorrt" or "aoti"
    std::string device;       ///< the device string it was compiled for
    std::string precision;    ///< from engine.json
    std::string model_file;   ///< the model file loaded (model.xml, model.onnx, model.plan, model.pt2)
    int image_height = 0, image_width = 0;
    int max_batch = 0;
    int num_streams = 0;
    int frames_per_request = 0;  ///< the value in force (EngineOptions::frames_per_request resolved)
    int num_threads = 0;
    float calibrated_threshold = 0.f;  ///< engine.json threshold.value
    float threshold = 0.f;             ///< the threshold in force
    std::string map_mode;              ///< "add" or "mul"
    double sigma = 0.0;
    std::vector<FeatureInfo> features;
};

class Engine {
public:
    /// Loads and validates `engine_dir` (engine.json format version, file hashes, shapes)
    /// and compiles the model. Throws cdd::Error with a message naming the problem.
    explicit Engine(const std::string& engine_dir, const EngineOptions& options = EngineOptions());
    ~Engine();
    Engine(Engine&&) noexcept;
    Engine& operator=(Engine&&) noexcept;
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    /// Scores `n` frames (any sizes and formats mixed), split into batches of at most
    /// max_batch. Thread-safe: many threads may call score() on one Engine; up to
    /// num_streams of them run the network at the same time, the others wait.
    std::vector<Result> score(const ImageView* views, std::size_t n) const;
    std::vector<Result> score(const ImageView* views, std::size_t n, const ScoreOptions& options) const;
    Result score(const ImageView& view) const;

    /// Allocation-free variant: writes scores[i], is_anomalous[i] (either may be null) and,
    /// when maps is not null and maps[i] is not null, the map of frame i into maps[i], which
    /// must hold map_height x map_width floats as given by map_shape(views[i], options.map).
    void score_into(const ImageView* views, std::size_t n, const ScoreOptions& options, float* scores,
                    bool* is_anomalous, float* const* maps) const;

    /// (height, width) of the map score() returns for `view` with `map`; (0, 0) for None.
    std::pair<int, int> map_shape(const ImageView& view, MapOutput map) const;

    const EngineInfo& info() const;
    float threshold() const;

    // Every method of a moved-from Engine throws cdd::Error (InvalidArgument).
    // A NaN or infinite score (diverged model, bad weights) throws cdd::Error (NonFinite) from
    // score()/score_into(): no verdict is given for such a call.

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    /// impl_, or cdd::Error naming `method` when this Engine was moved from.
    Impl& live(const char* method) const;
};

/// Library version ("0.1.0") and the optional parts compiled in.
const char* version() noexcept;
bool built_with_openvino() noexcept;
bool built_with_tensorrt() noexcept;
bool built_with_cuda() noexcept;
/// True when built with CDD_WITH_AOTI (the AOTInductor backend, model.pt2 through libtorch).
bool built_with_aoti() noexcept;
/// The full torch version (torch.__version__, e.g. "2.13.0+cpu") of the libtorch an AOTI
/// build links, which an aoti engine's "aoti.torch_version" must equal; "" without AOTI.
const char* aoti_torch_version() noexcept;

}  // namespace cdd
