// TensorRT backend (CDD_WITH_TENSORRT): model.plan on an NVIDIA GPU.
//
// NOT RUN ON THE DEVELOPMENT MACHINES: they have no GPU and TensorRT cannot be installed there
// (docs/where_it_runs.md). The file is compile-checked against NVIDIA's public TensorRT headers
// (CDD_TENSORRT_COMPILE_ONLY) and written against the documented TensorRT 10/11 runtime API:
//
// - the plan is deserialised once (IRuntime::deserializeCudaEngine) and shared;
// - each worker of the pool owns one IExecutionContext and one CUDA stream (a context must
//   not be used by two streams at once), and device buffers for max_batch frames whose
//   addresses are bound once with setTensorAddress;
// - per batch size the network (enqueueV3) and the post-processing are captured once into a
//   CUDA graph and replayed (fewer launches, no per-call host work); the first enqueue of a
//   shape runs outside capture, as TensorRT asks, so its deferred setup is not captured;
// - pre- and post-processing run on the GPU with the Triton AOT kernels when the build embeds
//   them (CDD_WITH_CUDA), else on the CPU with the same kernels as the OpenVINO backend;
// - the CUDA driver is reached through cuda::driver() (dlopen), the runtime API only through
//   TensorRT itself.
#include <NvInferRuntime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../backend.hpp"
#include "../cuda/driver.hpp"
#include "../parallel.hpp"
#include "cdd/error.hpp"
#include "cdd/kernels.hpp"

#ifdef CDD_WITH_CUDA
#include "../cuda/gpu_kernels.hpp"
#endif

namespace cdd {
namespace detail {
namespace {

class Logger final : public nvinfer1::ILogger {
public:
    void log(Severity severity, const char* msg) noexcept override {
        if (severity > Severity::kWARNING) return;
        std::fprintf(stderr, "[TensorRT] %s\n", msg);
        if (severity <= Severity::kERROR) {
            std::lock_guard<std::mutex> lock(mu_);
            last_ = msg;
        }
    }
    std::string last() const {
        std::lock_guard<std::mutex> lock(mu_);
        return last_;
    }

private:
    mutable std::mutex mu_;
    std::string last_;
};

int cuda_ordinal(const std::string& device) {
    const auto colon = device.find(':');
    if (colon == std::string::npos) return 0;
    try {
        std::size_t used = 0;
        const int n = std::stoi(device.substr(colon + 1), &used);
        if (used == device.size() - colon - 1 && n >= 0) return n;
    } catch (const std::exception&) {
    }
    throw Error(ErrorCode::InvalidArgument, "device must be \"cuda\" or \"cuda:N\", got \"" + device + "\"");
}

std::size_t element_size(kernels::DType t) { return t == kernels::DType::Float16 ? 2 : 4; }

/// Everything the workers share: the CUDA context, the deserialised engine, the geometry.
struct Shared {
    std::unique_ptr<cuda::Context> ctx;
    Logger logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime;
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::string input_name;
    std::vector<std::string> teacher_names, student_names;
    std::vector<FeatureInfo> features;     // per scale (teacher == student geometry)
    std::vector<kernels::DType> dtypes;    // per scale, from the plan's output types
    int H = 0, W = 0, max_batch = 0, threads = 1, sm_count = 1;
    kernels::Normalization norm;
    kernels::MapSettings map;
    kernels::AnomalyMap cpu_map;           // post-processing when the GPU kernels are absent
#ifdef CDD_WITH_CUDA
    std::unique_ptr<cuda::KernelSet> kernels;
#endif
    explicit Shared(kernels::AnomalyMap m) : cpu_map(std::move(m)) {}
    ~Shared() {
        if (ctx) ctx->make_current();  // destroy TensorRT objects with their context current
#ifdef CDD_WITH_CUDA
        kernels.reset();
#endif
        engine.reset();
        runtime.reset();
    }
    bool gpu_kernels() const {
#ifdef CDD_WITH_CUDA
        return kernels != nullptr;
#else
        return false;
#endif
    }
};

class TensorRTWorker final : public Worker {
public:
    explicit TensorRTWorker(std::shared_ptr<Shared> sh) : sh_(std::move(sh)) {
        Shared& s = *sh_;
        s.ctx->make_current();
        context_.reset(s.engine->createExecutionContext());
        if (!context_) throw Error(ErrorCode::Backend, "TensorRT could not create an execution context: " + s.logger.last());
        stream_.reset(new cuda::Stream());
        const std::size_t B = static_cast<std::size_t>(s.max_batch), plane = static_cast<std::size_t>(3) * s.H * s.W;
        input_.reserve(B * plane * sizeof(float));
        bind(s.input_name, input_.get());
        for (std::size_t k = 0; k < s.features.size(); ++k) {
            const FeatureInfo& f = s.features[k];
            const std::size_t bytes = B * f.channels * f.height * f.width * element_size(s.dtypes[k]);
            teacher_.emplace_back(bytes);
            student_.emplace_back(bytes);
            bind(s.teacher_names[k], teacher_.back().get());
            bind(s.student_names[k], student_.back().get());
        }
        const std::size_t full = static_cast<std::size_t>(s.H) * s.W;
        maps_.resize(B * full);
        host_maps_.reserve(B * full * sizeof(float));
        host_scores_.reserve(B * sizeof(float));
#ifdef CDD_WITH_CUDA
        if (s.gpu_kernels()) {
            std::vector<cuda::FeatureGeometry> geo;
            for (std::size_t k = 0; k < s.features.size(); ++k)
                geo.push_back({s.features[k].channels, s.features[k].height, s.features[k].width, s.dtypes[k]});
            gpu_map_.reset(new cuda::GpuAnomalyMap(*s.kernels, s.H, s.W, geo, s.map, s.max_batch, s.sm_count));
            gpu_pre_.reset(new cuda::GpuPreprocess(*s.kernels, s.H, s.W, s.norm));
            maps_dev_.reserve(B * full * sizeof(float));
            scores_dev_.reserve(B * sizeof(float));
        }
#endif
        if (!s.gpu_kernels()) {
            host_input_.reserve(B * plane * sizeof(float));
            for (std::size_t k = 0; k < s.features.size(); ++k) {
                const FeatureInfo& f = s.features[k];
                const std::size_t bytes = B * f.channels * f.height * f.width * element_size(s.dtypes[k]);
                host_teacher_.emplace_back(new cuda::PinnedBuffer(bytes));
                host_student_.emplace_back(new cuda::PinnedBuffer(bytes));
            }
        }
    }

    ~TensorRTWorker() override {
        sh_->ctx->make_current();
        for (auto& g : graphs_) cuda::driver().graph_exec_destroy(g.second);
        context_.reset();
    }

    void run(const ImageView* views, std::size_t n, float* scores) override {
        Shared& s = *sh_;
        s.ctx->make_current();  // the calling thread may differ from call to call
        const CUstream st = stream_->get();
        const std::size_t plane = static_cast<std::size_t>(3) * s.H * s.W, full = static_cast<std::size_t>(s.H) * s.W;
        const cuda::Driver& d = cuda::driver();
        // 1. pre-processing into the network's input buffer (frame sizes vary: not in the graph)
#ifdef CDD_WITH_CUDA
        if (gpu_pre_) {
            for (std::size_t i = 0; i < n; ++i)
                gpu_pre_->run(views[i], staging_, input_.get() + i * plane * sizeof(float), st);
        }
#endif
        if (!s.gpu_kernels()) {
            float* host = static_cast<float*>(host_input_.get());
            const int outer = static_cast<int>(std::min<std::size_t>(n, s.threads));
            parallel_for(n, outer, [&](std::size_t b, std::size_t e) {
                for (std::size_t i = b; i < e; ++i)
                    kernels::preprocess(views[i], s.H, s.W, s.norm, host + i * plane, std::max(1, s.threads / outer));
            });
            cuda::check(d.memcpy_htod_async(input_.get(), host, n * plane * sizeof(float), st), "cuMemcpyHtoDAsync(input)");
        }
        // 2. network + post-processing + copies out: one CUDA graph per batch size
        cuda::check(d.graph_launch(graph_for(static_cast<int>(n)), st), "cuGraphLaunch");
        stream_->synchronize();
        // 3. results
        if (s.gpu_kernels()) {
            std::memcpy(scores, host_scores_.get(), n * sizeof(float));
            std::memcpy(maps_.data(), host_maps_.get(), n * full * sizeof(float));
        } else {
            std::vector<kernels::FeaturePair> levels(s.features.size());
            for (std::size_t k = 0; k < levels.size(); ++k)
                levels[k] = {host_teacher_[k]->get(), host_student_[k]->get(), s.dtypes[k], s.features[k].channels,
                             s.features[k].height, s.features[k].width};
            s.cpu_map.run_batch(levels.data(), n, maps_.data(), scores, s.threads);
        }
    }

    const float* maps() const override { return maps_.data(); }

private:
    void bind(const std::string& name, CUdeviceptr ptr) {
        if (!context_->setTensorAddress(name.c_str(), reinterpret_cast<void*>(ptr)))
            throw Error(ErrorCode::Backend, "TensorRT rejected the address of tensor " + name + ": " + sh_->logger.last());
    }

    /// Work enqueued after pre-processing for a batch of n: the network, then either the GPU
    /// anomaly map and copies of maps + scores to pinned memory, or copies of the features.
    void enqueue_after_input(int n, CUstream st) {
        Shared& s = *sh_;
        if (!context_->enqueueV3(st))
            throw Error(ErrorCode::Backend, "TensorRT enqueueV3 failed: " + s.logger.last());
        const cuda::Driver& d = cuda::driver();
#ifdef CDD_WITH_CUDA
        if (gpu_map_) {
            const std::size_t full = static_cast<std::size_t>(s.H) * s.W;
            std::vector<cuda::DeviceFeature> levels;
            for (std::size_t k = 0; k < s.features.size(); ++k) levels.push_back({teacher_[k].get(), student_[k].get()});
            gpu_map_->run(levels.data(), n, maps_dev_.get(), scores_dev_.get(), st);
            cuda::check(d.memcpy_dtoh_async(host_maps_.get(), maps_dev_.get(), n * full * sizeof(float), st),
                        "cuMemcpyDtoHAsync(maps)");
            cuda::check(d.memcpy_dtoh_async(host_scores_.get(), scores_dev_.get(), n * sizeof(float), st),
                        "cuMemcpyDtoHAsync(scores)");
            return;
        }
#endif
        for (std::size_t k = 0; k < s.features.size(); ++k) {
            const FeatureInfo& f = s.features[k];
            const std::size_t bytes = static_cast<std::size_t>(n) * f.channels * f.height * f.width * element_size(s.dtypes[k]);
            cuda::check(d.memcpy_dtoh_async(host_teacher_[k]->get(), teacher_[k].get(), bytes, st), "cuMemcpyDtoHAsync");
            cuda::check(d.memcpy_dtoh_async(host_student_[k]->get(), student_[k].get(), bytes, st), "cuMemcpyDtoHAsync");
        }
    }

    /// The instantiated graph for batch n, captured on first use.
    CUgraphExec graph_for(int n) {
        auto it = graphs_.find(n);
        if (it != graphs_.end()) {
            set_shape(n);  // keeps the context's shape state equal to what the graph was captured with
            return it->second;
        }
        const cuda::Driver& d = cuda::driver();
        const CUstream st = stream_->get();
        set_shape(n);
        // first enqueue of this shape outside capture: TensorRT sets up shape-dependent state
        enqueue_after_input(n, st);
        stream_->synchronize();
        cuda::check(d.stream_begin_capture(st, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), "cuStreamBeginCapture");
        CUgraph graph = nullptr;
        try {
            enqueue_after_input(n, st);
        } catch (...) {
            d.stream_end_capture(st, &graph);
            if (graph) d.graph_destroy(graph);
            throw;
        }
        cuda::check(d.stream_end_capture(st, &graph), "cuStreamEndCapture");
        CUgraphExec exec = nullptr;
        const CUresult r = d.graph_instantiate(&exec, graph, 0);
        d.graph_destroy(graph);
        cuda::check(r, "cuGraphInstantiate");
        graphs_[n] = exec;
        return exec;
    }

    void set_shape(int n) {
        Shared& s = *sh_;
        nvinfer1::Dims dims;
        dims.nbDims = 4;
        dims.d[0] = n;
        dims.d[1] = 3;
        dims.d[2] = s.H;
        dims.d[3] = s.W;
        if (!context_->setInputShape(s.input_name.c_str(), dims))
            throw Error(ErrorCode::Backend, "TensorRT rejected input shape (" + std::to_string(n) + ", 3, " +
                                                std::to_string(s.H) + ", " + std::to_string(s.W) + "): " + s.logger.last());
    }

    std::shared_ptr<Shared> sh_;
    std::unique_ptr<nvinfer1::IExecutionContext> context_;
    std::unique_ptr<cuda::Stream> stream_;
    cuda::DeviceBuffer input_, maps_dev_, scores_dev_, staging_;
    std::vector<cuda::DeviceBuffer> teacher_, student_;
    cuda::PinnedBuffer host_maps_, host_scores_, host_input_;
    std::vector<std::unique_ptr<cuda::PinnedBuffer>> host_teacher_, host_student_;
    std::vector<float> maps_;
    std::map<int, CUgraphExec> graphs_;
#ifdef CDD_WITH_CUDA
    std::unique_ptr<cuda::GpuAnomalyMap> gpu_map_;
    std::unique_ptr<cuda::GpuPreprocess> gpu_pre_;
#endif
};

/// The file's bytes, refused unless it holds exactly the `expected` bytes engine.json lists
/// (verify_file() has checked it is a regular file of that size; this re-checks what is read).
std::vector<char> read_file(const std::string& path, std::uint64_t expected) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) throw Error(ErrorCode::NotFound, "cannot open " + path);
    const std::streamsize n = in.tellg();
    if (n < 0 || static_cast<std::uint64_t>(n) != expected)
        throw Error(ErrorCode::EngineFormat, path + " does not hold the " + std::to_string(expected) +
                                                 " bytes engine.json lists: replaced file");
    std::vector<char> data(static_cast<std::size_t>(std::max<std::streamsize>(n, 0)));
    in.seekg(0);
    if (!in.read(data.data(), n)) throw Error(ErrorCode::EngineFormat, "cannot read " + path);
    return data;
}

/// Checks that the plan's I/O tensor `name` exists, has `mode`, and shape (-1|B, dims...).
void check_tensor(const Manifest& m, const nvinfer1::ICudaEngine& e, const std::string& name,
                  nvinfer1::TensorIOMode mode, const std::vector<int>& dims) {
    bool found = false;
    for (int i = 0; i < e.getNbIOTensors(); ++i) found = found || name == e.getIOTensorName(i);
    if (!found) throw Error(ErrorCode::EngineFormat, m.path("model.plan") + ": the plan has no tensor " + name);
    if (e.getTensorIOMode(name.c_str()) != mode)
        throw Error(ErrorCode::EngineFormat, m.path("model.plan") + ": tensor " + name + " has the wrong direction");
    const nvinfer1::Dims d = e.getTensorShape(name.c_str());
    bool ok = d.nbDims == static_cast<int>(dims.size()) + 1;
    for (std::size_t k = 0; ok && k < dims.size(); ++k) ok = d.d[k + 1] == dims[k];
    if (!ok)
        throw Error(ErrorCode::EngineFormat,
                    m.path("model.plan") + ": tensor " + name + " does not have the shape engine.json gives");
}

kernels::DType feature_dtype(const Manifest& m, const nvinfer1::ICudaEngine& e, const std::string& name) {
    switch (e.getTensorDataType(name.c_str())) {
        case nvinfer1::DataType::kFLOAT:
            return kernels::DType::Float32;
        case nvinfer1::DataType::kHALF:
            return kernels::DType::Float16;
        default:
            throw Error(ErrorCode::EngineFormat, m.path("model.plan") + ": output " + name + " must be float32 or float16");
    }
}

}  // namespace

std::vector<std::unique_ptr<Worker>> make_tensorrt_workers(const Manifest& m, const EngineOptions& options,
                                                           EngineInfo& info) {
    if (m.backend != "tensorrt")
        throw Error(ErrorCode::EngineFormat, m.dir + " was built for backend \"" + m.backend +
                                                 "\"; a CUDA device needs an engine built with backend=\"tensorrt\" "
                                                 "on this machine");
    verify_files(m, options.verify_hashes);
    auto sh = std::make_shared<Shared>(make_anomaly_map(m));
    sh->ctx.reset(new cuda::Context(cuda_ordinal(options.device)));
    sh->H = m.image_h;
    sh->W = m.image_w;
    sh->threads = info.num_threads;
    sh->norm = m.norm;
    sh->map = m.map;
    sh->input_name = m.input_name;
    sh->runtime.reset(nvinfer1::createInferRuntime(sh->logger));
    if (!sh->runtime) throw Error(ErrorCode::Backend, "TensorRT: createInferRuntime failed: " + sh->logger.last());
    const std::vector<char> plan = read_file(m.path("model.plan"), m.files.at("model.plan").bytes);
    sh->engine.reset(sh->runtime->deserializeCudaEngine(plan.data(), plan.size()));
    if (!sh->engine)
        throw Error(ErrorCode::Backend, m.path("model.plan") + " cannot be deserialised (built by another TensorRT "
                                                              "version or for another GPU? rebuild it on this machine): " +
                                            sh->logger.last());
    const nvinfer1::ICudaEngine& e = *sh->engine;
    check_tensor(m, e, m.input_name, nvinfer1::TensorIOMode::kINPUT, {3, m.image_h, m.image_w});
    for (std::size_t k = 0; k < m.teachers.size(); ++k) {
        const FeatureInfo& f = m.teachers[k];
        for (const std::string& name : {m.teachers[k].name, m.students[k].name})
            check_tensor(m, e, name, nvinfer1::TensorIOMode::kOUTPUT, {f.channels, f.height, f.width});
        const kernels::DType dt = feature_dtype(m, e, m.teachers[k].name);
        if (dt != feature_dtype(m, e, m.students[k].name))
            throw Error(ErrorCode::EngineFormat, m.path("model.plan") + ": teacher and student outputs of scale " +
                                                     std::to_string(k) + " differ in type");
        sh->features.push_back(f);
        sh->dtypes.push_back(dt);
        sh->teacher_names.push_back(m.teachers[k].name);
        sh->student_names.push_back(m.students[k].name);
    }
    // the plan's optimisation profile bounds the batch: never ask for more
    const nvinfer1::Dims maxd = e.getProfileShape(m.input_name.c_str(), 0, nvinfer1::OptProfileSelector::kMAX);
    sh->max_batch = maxd.nbDims == 4 && maxd.d[0] > 0 ? std::min<int>(m.max_batch, static_cast<int>(maxd.d[0])) : m.max_batch;
    info.max_batch = sh->max_batch;
    int sms = 1;
    cuda::check(cuda::driver().device_get_attribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, sh->ctx->device()),
                "cuDeviceGetAttribute");
    sh->sm_count = sms;
#ifdef CDD_WITH_CUDA
    if (cuda::aot_kernels_embedded()) sh->kernels.reset(new cuda::KernelSet(sh->ctx->compute_capability()));
#endif
    info.backend = "tensorrt";
    info.model_file = "model.plan";
    std::vector<std::unique_ptr<Worker>> workers;
    for (int i = 0; i < options.num_streams; ++i) workers.emplace_back(new TensorRTWorker(sh));
    return workers;
}

}  // namespace detail
}  // namespace cdd
