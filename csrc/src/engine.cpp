// cdd::Engine: loading, the worker pool, chunking into max_batch, thresholds and map output.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <mutex>

#include "backend.hpp"
#include "cdd/engine.hpp"
#include "cdd/error.hpp"
#include "cdd/kernels.hpp"
#include "parallel.hpp"

#ifndef CDD_VERSION
#define CDD_VERSION "0.0.0"
#endif

namespace cdd {

const char* version() noexcept { return CDD_VERSION; }

bool built_with_openvino() noexcept {
#ifdef CDD_WITH_OPENVINO
    return true;
#else
    return false;
#endif
}

bool built_with_tensorrt() noexcept {
#ifdef CDD_WITH_TENSORRT
    return true;
#else
    return false;
#endif
}

bool built_with_aoti() noexcept {
#ifdef CDD_WITH_AOTI
    return true;
#else
    return false;
#endif
}

#ifndef CDD_WITH_AOTI
const char* aoti_torch_version() noexcept { return ""; }
#endif

bool built_with_cuda() noexcept {
#ifdef CDD_WITH_CUDA
    return true;
#else
    return false;
#endif
}

namespace detail {

kernels::AnomalyMap make_anomaly_map(const Manifest& m) {
    std::vector<std::pair<int, int>> scales;
    for (const auto& f : m.teachers) scales.emplace_back(f.height, f.width);
    return kernels::AnomalyMap(m.image_h, m.image_w, scales, m.map);
}

#ifndef CDD_WITH_OPENVINO
std::vector<std::unique_ptr<Worker>> make_openvino_workers(const Manifest&, const EngineOptions&, EngineInfo&) {
    throw Error(ErrorCode::Unsupported,
                "this build of libcdd_engine has no OpenVINO backend (configure with -DOpenVINO_DIR=... so that "
                "find_package(OpenVINO) succeeds)");
}
#endif

#ifndef CDD_WITH_TENSORRT
std::vector<std::unique_ptr<Worker>> make_tensorrt_workers(const Manifest&, const EngineOptions&, EngineInfo&) {
    throw Error(ErrorCode::Unsupported,
                "device \"cuda\" needs the TensorRT backend, which this build of libcdd_engine does not have "
                "(configure with -DCDD_WITH_TENSORRT=ON on a machine with TensorRT and CUDA)");
}
#endif

#ifndef CDD_WITH_AOTI
std::vector<std::unique_ptr<Worker>> make_aoti_workers(const Manifest& m, const EngineOptions&, EngineInfo&) {
    throw Error(ErrorCode::Unsupported,
                m.dir + " is an aoti engine (an AOTInductor package, model.pt2), but this libcdd_engine was built "
                        "without AOTInductor support (CDD_WITH_AOTI): reconfigure with -DCDD_WITH_AOTI=ON against the "
                        "installed torch (csrc/README.md), or build the engine with backend=\"openvino\"");
}
#endif

namespace {
bool is_cuda_device(const std::string& d) {
    std::string l = d;
    std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return l == "cuda" || l.rfind("cuda:", 0) == 0;
}
}  // namespace

}  // namespace detail

struct Engine::Impl {
    detail::Manifest manifest;
    EngineInfo info;
    MapOutput default_map = MapOutput::ModelSize;
    std::vector<std::unique_ptr<detail::Worker>> workers;
    std::vector<detail::Worker*> idle;
    std::mutex mu;
    std::condition_variable cv;

    /// A worker for one score() call: waits while all are busy.
    detail::Worker* acquire() {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return !idle.empty(); });
        detail::Worker* w = idle.back();
        idle.pop_back();
        return w;
    }
    /// Another worker if one is idle right now, else null (never waits).
    detail::Worker* try_acquire() {
        std::lock_guard<std::mutex> lock(mu);
        if (idle.empty()) return nullptr;
        detail::Worker* w = idle.back();
        idle.pop_back();
        return w;
    }
    void release(detail::Worker* w) {
        {
            std::lock_guard<std::mutex> lock(mu);
            idle.push_back(w);
        }
        cv.notify_one();
    }

    /// The workers borrowed by one call: one waited for, more taken while idle; all returned
    /// on destruction.
    class Leases {
    public:
        Leases(Impl& impl, std::size_t want) : impl_(impl) {
            held_.push_back(impl_.acquire());
            while (held_.size() < want) {
                detail::Worker* w = impl_.try_acquire();
                if (w == nullptr) break;
                held_.push_back(w);
            }
        }
        ~Leases() {
            for (detail::Worker* w : held_) impl_.release(w);
        }
        Leases(const Leases&) = delete;
        Leases& operator=(const Leases&) = delete;
        const std::vector<detail::Worker*>& workers() const { return held_; }

    private:
        Impl& impl_;
        std::vector<detail::Worker*> held_;
    };
};

Engine::Engine(const std::string& engine_dir, const EngineOptions& options) : impl_(new Impl) {
    if (options.num_streams < 1)
        throw Error(ErrorCode::InvalidArgument, "num_streams must be >= 1, got " + std::to_string(options.num_streams));
    if (options.num_threads < 0)
        throw Error(ErrorCode::InvalidArgument, "num_threads must be >= 0 (0 = all cores), got " +
                                                    std::to_string(options.num_threads));
    if (options.sensitivity && !(*options.sensitivity > 0.f))
        throw Error(ErrorCode::InvalidArgument, "sensitivity must be > 0, got " + std::to_string(*options.sensitivity));
    if (options.threshold && !std::isfinite(*options.threshold))
        throw Error(ErrorCode::InvalidArgument, "threshold override must be finite");
    if (options.map != MapOutput::None && options.map != MapOutput::ModelSize && options.map != MapOutput::InputSize)
        throw Error(ErrorCode::InvalidArgument, "unknown map output " + std::to_string(static_cast<int>(options.map)));
    Impl& im = *impl_;
    im.manifest = detail::read_manifest(engine_dir);
    const detail::Manifest& m = im.manifest;
    im.default_map = options.map;
    EngineInfo& info = im.info;
    info.engine_dir = m.dir;
    info.precision = m.precision;
    info.image_height = m.image_h;
    info.image_width = m.image_w;
    info.max_batch = m.max_batch;
    info.num_streams = options.num_streams;
    if (options.frames_per_request < 0 || options.frames_per_request > m.max_batch)
        throw Error(ErrorCode::InvalidArgument, "frames_per_request must be in [0, max_batch = " +
                                                    std::to_string(m.max_batch) + "] (0 = by precision), got " +
                                                    std::to_string(options.frames_per_request));
    info.frames_per_request = options.frames_per_request > 0 ? options.frames_per_request
                              : m.precision == "int8"       ? std::min(kInt8FramesPerRequest, m.max_batch)
                                                            : 1;
    info.num_threads = detail::resolve_threads(options.num_threads);
    info.calibrated_threshold = m.threshold;
    info.threshold = options.threshold ? *options.threshold
                                       : options.sensitivity ? m.threshold / *options.sensitivity : m.threshold;
    info.map_mode = m.map.mode == kernels::MapMode::Add ? "add" : "mul";
    info.sigma = m.map.sigma;
    for (std::size_t s = 0; s < m.teachers.size(); ++s) info.features.push_back(m.teachers[s]);
    for (std::size_t s = 0; s < m.students.size(); ++s) info.features.push_back(m.students[s]);
    info.device = options.device;
    if (m.backend == "aoti")  // the package itself decides the device kind (its "aoti" section)
        im.workers = detail::make_aoti_workers(m, options, info);
    else
        im.workers = detail::is_cuda_device(options.device) ? detail::make_tensorrt_workers(m, options, info)
                                                            : detail::make_openvino_workers(m, options, info);
    for (auto& w : im.workers) im.idle.push_back(w.get());
}

Engine::~Engine() = default;
Engine::Engine(Engine&&) noexcept = default;
Engine& Engine::operator=(Engine&&) noexcept = default;

Engine::Impl& Engine::live(const char* method) const {
    if (!impl_)
        throw Error(ErrorCode::InvalidArgument,
                    std::string(method) + "() on a moved-from Engine (it holds no engine any more)");
    return *impl_;
}

const EngineInfo& Engine::info() const { return live("info").info; }
float Engine::threshold() const { return live("threshold").info.threshold; }

std::pair<int, int> Engine::map_shape(const ImageView& view, MapOutput map) const {
    live("map_shape");
    switch (map) {
        case MapOutput::None:
            return {0, 0};
        case MapOutput::ModelSize:
            return {impl_->info.image_height, impl_->info.image_width};
        case MapOutput::InputSize:
            return {view.height, view.width};
    }
    throw Error(ErrorCode::InvalidArgument, "unknown map output " + std::to_string(static_cast<int>(map)));
}

void Engine::score_into(const ImageView* views, std::size_t n, const ScoreOptions& options, float* scores,
                        bool* is_anomalous, float* const* maps) const {
    Impl& im = live("score_into");
    if (n == 0) return;
    if (views == nullptr) throw Error(ErrorCode::InvalidArgument, "views pointer is null (with n = " + std::to_string(n) + ")");
    const MapOutput map = options.map;
    if (map != MapOutput::None && map != MapOutput::ModelSize && map != MapOutput::InputSize)
        throw Error(ErrorCode::InvalidArgument, "unknown map output " + std::to_string(static_cast<int>(map)));
    for (std::size_t i = 0; i < n; ++i) validate(views[i], i);  // all inputs checked before any work
    const int H = im.info.image_height, W = im.info.image_width;
    const std::size_t full = static_cast<std::size_t>(H) * W;
    const std::size_t batch = static_cast<std::size_t>(im.info.max_batch);
    // One stream: pieces of at most max_batch frames, one request each. Several streams:
    // up to frames_per_request frames per request (1 for fp32, 4 for INT8 by default), the workers
    // taking turns (a batch of 8 on 2 streams of 1 frame: 2 x 1 at a time), as the Python
    // runtime's auto mode does: on CPUs an fp32 request over several frames is no faster per
    // frame (activations outgrow the caches), and small requests keep every stream busy to the
    // end (benchmarks/RESULTS.md, native runtime run 5 vs run 6, and frames per request).
    const std::size_t chunks = (n + batch - 1) / batch;
    const std::size_t per_request = static_cast<std::size_t>(im.info.frames_per_request);
    // the split depends on n, max_batch, frames_per_request and the pool size only, never on how
    // many workers were idle: the same frames always meet the network in the same sub-batches
    // (never fewer pieces than streams: a call of 4 frames at 4 per request would leave one idle)
    const std::size_t streams = im.workers.size();
    const std::size_t pieces =
        streams > 1 ? std::max((n + per_request - 1) / per_request, std::min(n, streams)) : chunks;
    Impl::Leases leases(im, std::min(pieces, streams));
    const std::vector<detail::Worker*>& ws = leases.workers();
    auto piece_begin = [&](std::size_t p) { return n * p / pieces; };  // balanced, in order

    auto run_piece = [&](detail::Worker& worker, std::size_t p, std::vector<float>& piece_scores) {
        const std::size_t off = piece_begin(p), k = piece_begin(p + 1) - off;
        if (k == 0) return;
        piece_scores.resize(k);
        worker.run(views + off, k, piece_scores.data());
        for (std::size_t i = 0; i < k; ++i)
            if (!std::isfinite(piece_scores[i]))  // one pass over k floats: free
                throw Error(ErrorCode::NonFinite,
                            "image " + std::to_string(off + i) + ": the model produced non-finite output (score " +
                                std::to_string(piece_scores[i]) +
                                "): diverged model or bad weights; refusing to give a verdict");
        for (std::size_t i = 0; i < k; ++i) {
            const float s = piece_scores[i];
            if (scores) scores[off + i] = s;
            if (is_anomalous) is_anomalous[off + i] = s > im.info.threshold;
        }
        if (map == MapOutput::None || maps == nullptr) return;
        const float* model_maps = worker.maps();
        // input-size maps are resized on several threads when the piece is small
        const int threads = std::max(1, im.info.num_threads / static_cast<int>(ws.size()));
        const int outer = static_cast<int>(std::min<std::size_t>(k, threads));
        detail::parallel_for(k, outer, [&](std::size_t b, std::size_t e) {
            for (std::size_t i = b; i < e; ++i) {
                float* dst = maps[off + i];
                if (dst == nullptr) continue;
                const float* src = model_maps + i * full;
                if (map == MapOutput::ModelSize)
                    std::memcpy(dst, src, full * sizeof(float));
                else
                    kernels::resize_plane(src, H, W, W, dst, views[off + i].height, views[off + i].width,
                                          std::max(1, threads / outer));
            }
        });
    };
    // worker j takes pieces j, j + w, j + 2w, ... (each worker is used by one thread only)
    detail::parallel_for(ws.size(), static_cast<int>(ws.size()), [&](std::size_t b, std::size_t e) {
        std::vector<float> piece_scores;
        for (std::size_t j = b; j < e; ++j)
            for (std::size_t p = j; p < pieces; p += ws.size()) run_piece(*ws[j], p, piece_scores);
    });
}

std::vector<Result> Engine::score(const ImageView* views, std::size_t n, const ScoreOptions& options) const {
    live("score");
    if (n > 0 && views == nullptr)
        throw Error(ErrorCode::InvalidArgument, "views pointer is null (with n = " + std::to_string(n) + ")");
    for (std::size_t i = 0; i < n; ++i) validate(views[i], i);
    std::vector<Result> out(n);
    std::vector<float> scores(n);
    std::unique_ptr<bool[]> anomalous(new bool[n == 0 ? 1 : n]);
    std::vector<float*> maps(n, nullptr);
    if (options.map != MapOutput::None)
        for (std::size_t i = 0; i < n; ++i) {
            const auto hw = map_shape(views[i], options.map);
            out[i].map_height = hw.first;
            out[i].map_width = hw.second;
            out[i].map.resize(static_cast<std::size_t>(hw.first) * hw.second);
            maps[i] = out[i].map.data();
        }
    score_into(views, n, options, scores.data(), anomalous.get(), maps.data());
    for (std::size_t i = 0; i < n; ++i) {
        out[i].score = scores[i];
        out[i].threshold = impl_->info.threshold;
        out[i].is_anomalous = anomalous[i];
    }
    return out;
}

std::vector<Result> Engine::score(const ImageView* views, std::size_t n) const {
    ScoreOptions o;
    o.map = live("score").default_map;
    return score(views, n, o);
}

Result Engine::score(const ImageView& view) const { return std::move(score(&view, 1).front()); }

}  // namespace cdd
