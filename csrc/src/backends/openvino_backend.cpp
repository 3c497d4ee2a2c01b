// OpenVINO backend: the network on the CPU (or another OpenVINO device), our own kernels
// around it.
//
// The network is compiled with a static shape for each batch size it meets (up to
// kMaxStaticShapes of them, max_batch first; others share one dynamic-batch compilation):
// OpenVINO's CPU plugin runs static shapes faster, as the Python OpenVINO path also found.
//
// The per-pixel cosine distances (the memory-bound first stage of the anomaly map) are
// appended to the network graph by default, so the six feature maps never leave OpenVINO:
// as graph outputs they cost ~9% more CPU time on wide_resnet50_2 (measured: 7.32 s vs
// 6.70 s of CPU per batch of 8 for outputs vs an in-graph map) because OpenVINO then has to
// materialise them in plain layout. The C++ kernel does the rest of the map (upsampling and
// blur folded into small matrices, sum, max). EngineOptions::distances_in_network = false
// reads the six features instead and runs the whole fused C++ map.
//
// Pre-processing runs in our kernel rather than in OpenVINO's PrePostProcessor: the
// contract is PyTorch's antialiased bilinear resize, which OpenVINO's RESIZE_LINEAR does
// not reproduce when down-scaling, so the in-model variant would give different scores.
// Our kernel writes the normalised NCHW batch straight into the memory the InferRequest
// reads (no copy), and the fused anomaly map reads the output tensors in place.
#include <openvino/op/constant.hpp>
#include <openvino/op/convert.hpp>
#include <openvino/op/divide.hpp>
#include <openvino/op/fake_quantize.hpp>
#include <openvino/op/maximum.hpp>
#include <openvino/op/multiply.hpp>
#include <openvino/op/reduce_sum.hpp>
#include <openvino/op/result.hpp>
#include <openvino/op/sqrt.hpp>
#include <openvino/op/subtract.hpp>
#include <openvino/openvino.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>

#include "../backend.hpp"
#include "../parallel.hpp"
#include "cdd/error.hpp"
#include "cdd/kernels.hpp"

namespace cdd {
namespace detail {
namespace {

std::string shape_str(const ov::PartialShape& s) {
    std::ostringstream os;
    os << s;
    return os.str();
}

bool trace() {
    static const bool on = [] {
        const char* v = std::getenv("CDD_TRACE");
        return v != nullptr && v[0] == '1';
    }();
    return on;
}

std::string distance_name(std::size_t s) { return "cdd_distance_" + std::to_string(s); }

// each static compilation holds its own copy of the weights (WRN50 RD: ~0.4 GB), so only the
// first few batch sizes met get one (max_batch and the usual remainder, typically)
constexpr std::size_t kMaxStaticShapes = 3;

/// The compiled model(s) and what every worker needs to read its outputs.
struct Shared {
    ov::Core core;
    std::shared_ptr<ov::Model> model;  // dynamic batch
    std::string device;
    ov::AnyMap config;
    bool static_shapes = true;
    std::mutex mu;                                  // guards the two members below
    std::map<std::size_t, ov::CompiledModel> by_batch;
    ov::CompiledModel dynamic;                      // compiled on first need
    std::string input_name;
    std::vector<std::string> teacher_names, student_names;
    bool distances_in_graph = true;  // outputs cdd_distance_<s> (B, h, w) instead of the features
    int H = 0, W = 0, max_batch = 0, threads = 1;
    kernels::Normalization norm;
    kernels::AnomalyMap amap;
    std::vector<FeatureInfo> features;

    explicit Shared(kernels::AnomalyMap a) : amap(std::move(a)) {}

    /// The compilation that runs batches of n: static for n when allowed, else dynamic.
    ov::CompiledModel compiled_for(std::size_t n) {
        std::lock_guard<std::mutex> lock(mu);
        auto it = by_batch.find(n);
        if (it != by_batch.end()) return it->second;
        if (static_shapes && by_batch.size() < kMaxStaticShapes) {
            std::shared_ptr<ov::Model> m = model->clone();
            m->reshape({{input_name, ov::PartialShape{static_cast<std::int64_t>(n), 3, H, W}}});
            return by_batch.emplace(n, core.compile_model(m, device, config)).first->second;
        }
        if (!dynamic) dynamic = core.compile_model(model, device, config);
        return dynamic;
    }
};

class OpenVINOWorker final : public Worker {
public:
    explicit OpenVINOWorker(std::shared_ptr<Shared> sh)
        : sh_(std::move(sh)),
          input_(ov::element::f32, ov::Shape{static_cast<std::size_t>(sh_->max_batch), 3,
                                             static_cast<std::size_t>(sh_->H), static_cast<std::size_t>(sh_->W)}),
          maps_(static_cast<std::size_t>(sh_->max_batch) * sh_->H * sh_->W) {}

    void run(const ImageView* views, std::size_t n, float* scores) override {
        Shared& sh = *sh_;
        const auto t0 = std::chrono::steady_clock::now();
        const std::size_t plane = static_cast<std::size_t>(3) * sh.H * sh.W;
        const int outer = static_cast<int>(std::min<std::size_t>(n, sh.threads));
        const int inner = std::max(1, sh.threads / outer);
        parallel_for(n, outer, [&](std::size_t b, std::size_t e) {
            for (std::size_t i = b; i < e; ++i)
                kernels::preprocess(views[i], sh.H, sh.W, sh.norm, input_.data<float>() + i * plane, inner);
        });
        std::vector<kernels::FeaturePair> levels(sh.teacher_names.size());
        std::vector<const float*> dist(sh.teacher_names.size());
        std::chrono::steady_clock::time_point t1, t2;
        try {
            // wraps our buffer: the network reads the pre-processed batch where it was written
            ov::Tensor in(ov::element::f32, ov::Shape{n, 3, static_cast<std::size_t>(sh.H), static_cast<std::size_t>(sh.W)},
                          input_.data<float>());
            ov::InferRequest& request = request_for(n);
            request.set_tensor(sh.input_name, in);
            t1 = std::chrono::steady_clock::now();
            request.infer();
            t2 = std::chrono::steady_clock::now();
            for (std::size_t s = 0; s < levels.size(); ++s) {
                if (sh.distances_in_graph) {
                    dist[s] = distance_map(request.get_tensor(distance_name(s)), s, n);
                } else {
                    const ov::Tensor t = request.get_tensor(sh.teacher_names[s]);
                    const ov::Tensor u = request.get_tensor(sh.student_names[s]);
                    levels[s] = feature_pair(t, u, s, n);
                }
            }
        } catch (const ov::Exception& e) {
            throw Error(ErrorCode::Backend, std::string("OpenVINO inference failed: ") + e.what());
        }
        if (sh.distances_in_graph)
            sh.amap.run_batch_from_distances(dist.data(), n, maps_.data(), scores, sh.threads);
        else
            sh.amap.run_batch(levels.data(), n, maps_.data(), scores, sh.threads);
        if (trace()) {  // CDD_TRACE=1: where a batch's time goes, on stderr
            const auto t3 = std::chrono::steady_clock::now();
            auto ms = [](std::chrono::steady_clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
            std::fprintf(stderr, "cdd openvino batch %zu: preprocess %.1f ms, network %.1f ms, map %.1f ms\n", n,
                         ms(t1 - t0), ms(t2 - t1), ms(t3 - t2));
        }
    }

    const float* maps() const override { return maps_.data(); }

    /// This worker's request for batches of n (created on first use).
    ov::InferRequest& request_for(std::size_t n) {
        auto it = requests_.find(n);
        if (it == requests_.end()) it = requests_.emplace(n, sh_->compiled_for(n).create_infer_request()).first;
        return it->second;
    }

private:
    const float* distance_map(const ov::Tensor& d, std::size_t s, std::size_t n) const {
        const FeatureInfo& f = sh_->features[s];
        const ov::Shape want{n, static_cast<std::size_t>(f.height), static_cast<std::size_t>(f.width)};
        if (d.get_shape() != want || d.get_element_type() != ov::element::f32)
            throw Error(ErrorCode::Backend, "distance output of scale " + std::to_string(s) + " has an unexpected shape");
        return d.data<const float>();
    }

    kernels::FeaturePair feature_pair(const ov::Tensor& t, const ov::Tensor& u, std::size_t s, std::size_t n) const {
        const FeatureInfo& f = sh_->features[s];
        const ov::Shape want{n, static_cast<std::size_t>(f.channels), static_cast<std::size_t>(f.height),
                             static_cast<std::size_t>(f.width)};
        for (const ov::Tensor* x : {&t, &u})
            if (x->get_shape() != want) {
                std::ostringstream os;
                os << "network output for scale " << s << " has shape " << x->get_shape() << ", engine.json says "
                   << want;
                throw Error(ErrorCode::EngineFormat, os.str());
            }
        const ov::element::Type et = t.get_element_type();
        if (et != u.get_element_type() || (et != ov::element::f32 && et != ov::element::f16))
            throw Error(ErrorCode::EngineFormat, "network outputs of scale " + std::to_string(s) +
                                                     " must both be f32 or f16, got " + et.get_type_name() + " and " +
                                                     u.get_element_type().get_type_name());
        kernels::FeaturePair p;
        p.teacher = t.data();
        p.student = u.data();
        p.dtype = et == ov::element::f32 ? kernels::DType::Float32 : kernels::DType::Float16;
        p.channels = f.channels;
        p.height = f.height;
        p.width = f.width;
        return p;
    }

    std::shared_ptr<Shared> sh_;
    std::map<std::size_t, ov::InferRequest> requests_;
    ov::Tensor input_;  // max_batch x 3 x H x W, aligned by OpenVINO; chunks use a prefix of it
    std::vector<float> maps_;
};

void check_port(const Manifest& m, const ov::PartialShape& ps, const FeatureInfo& f) {
    const std::int64_t want[3] = {f.channels, f.height, f.width};
    bool ok = ps.rank().is_static() && ps.rank().get_length() == 4;
    for (int d = 0; ok && d < 3; ++d) ok = ps[d + 1].is_static() && ps[d + 1].get_length() == want[d];
    if (!ok)
        throw Error(ErrorCode::EngineFormat, m.dir + ": model output " + f.name + " has shape " + shape_str(ps) +
                                                 ", engine.json says (B, " + std::to_string(f.channels) + ", " +
                                                 std::to_string(f.height) + ", " + std::to_string(f.width) + ")");
}

/// engine.json's "precision" must describe the IR: fp32 holds no f16 weight, fp16 holds f16
/// weights (compress_to_fp16), int8 holds FakeQuantize operations (NNCF's INT8 network) and
/// fp32/fp16 none. The hashes protect the model files, not engine.json's own fields, so a
/// relabelled precision is caught here (same rule as engine_format.check_precision).
void check_precision(const Manifest& m, const ov::Model& model, const std::string& file) {
    bool f16 = false, quantized = false;
    for (const auto& op : model.get_ops()) {
        if (ov::is_type<ov::op::v0::FakeQuantize>(op)) quantized = true;
        const auto c = ov::as_type_ptr<ov::op::v0::Constant>(op);
        if (c && c->get_element_type() == ov::element::f16) f16 = true;
    }
    std::string why;
    if (m.precision == "fp32" && f16) why = "it holds float16 weights";
    if (m.precision == "fp16" && !f16) why = "it holds no float16 weights";
    if (m.precision == "int8" && !quantized) why = "it holds no FakeQuantize operation (not an INT8 network)";
    if (m.precision != "int8" && quantized) why = "it holds FakeQuantize operations (an INT8 network)";
    if (!why.empty())
        throw Error(ErrorCode::EngineFormat, m.dir + "/engine.json: \"precision\" is \"" + m.precision +
                                                 "\" but the model " + file + " disagrees: " + why +
                                                 " (a relabelled precision is refused)");
}

/// The network with the cosine-distance stage appended: per scale s a new output
/// cdd_distance_<s> = 1 - <T,S> / (max(|T|, eps) max(|S|, eps)) over channels, (B, h_s, w_s)
/// fp32, replacing the six feature outputs (docs/anomaly_map.md, step 1).
std::shared_ptr<ov::Model> with_distances(const std::shared_ptr<ov::Model>& model, const Manifest& m) {
    using namespace ov::op;
    auto feature = [&](const std::string& name) -> ov::Output<ov::Node> {
        ov::Output<ov::Node> out = model->output(name).get_node_shared_ptr()->input_value(0);  // the Result's input
        if (out.get_element_type() != ov::element::f32) out = std::make_shared<v0::Convert>(out, ov::element::f32);
        return out;
    };
    const auto channel_axis = v0::Constant::create(ov::element::i64, ov::Shape{1}, {1});
    const auto eps = v0::Constant::create(ov::element::f32, ov::Shape{}, {static_cast<float>(m.map.eps)});
    const auto one = v0::Constant::create(ov::element::f32, ov::Shape{}, {1.0f});
    auto sum_of = [&](const ov::Output<ov::Node>& a, const ov::Output<ov::Node>& b) {
        return std::make_shared<v1::ReduceSum>(std::make_shared<v1::Multiply>(a, b), channel_axis, false);
    };
    ov::ResultVector results;
    for (std::size_t s = 0; s < m.teachers.size(); ++s) {
        const ov::Output<ov::Node> t = feature(m.teachers[s].name), u = feature(m.students[s].name);
        auto nt = std::make_shared<v1::Maximum>(std::make_shared<v0::Sqrt>(sum_of(t, t)), eps);
        auto ns = std::make_shared<v1::Maximum>(std::make_shared<v0::Sqrt>(sum_of(u, u)), eps);
        auto cos = std::make_shared<v1::Divide>(sum_of(t, u), std::make_shared<v1::Multiply>(nt, ns));
        auto d = std::make_shared<v1::Subtract>(one, cos);
        auto r = std::make_shared<v0::Result>(d);
        r->output(0).get_tensor().set_names({distance_name(s)});
        results.push_back(r);
    }
    return std::make_shared<ov::Model>(results, model->get_parameters(), "cdd_engine_distances");
}

}  // namespace

std::vector<std::unique_ptr<Worker>> make_openvino_workers(const Manifest& m, const EngineOptions& options,
                                                           EngineInfo& info) {
    // model.xml/.bin when the engine was built for OpenVINO, else the portable model.onnx
    // (a TensorRT engine directory runs on the CPU that way too)
    if (m.backend == "torch")
        throw Error(ErrorCode::Unsupported, m.dir + " is a \"torch\" engine (a PyTorch state dict), which the C++ "
                                                    "library cannot run: build it with backend=\"openvino\" (CPU) or "
                                                    "\"tensorrt\" (NVIDIA GPU)");
    verify_files(m, options.verify_hashes);
    const std::string model_file = m.lists("model.xml") ? "model.xml" : "model.onnx";
    auto sh = std::make_shared<Shared>(make_anomaly_map(m));
    sh->H = m.image_h;
    sh->W = m.image_w;
    sh->max_batch = m.max_batch;
    sh->threads = info.num_threads;
    sh->norm = m.norm;
    sh->features = m.teachers;
    for (std::size_t s = 0; s < m.teachers.size(); ++s) {
        sh->teacher_names.push_back(m.teachers[s].name);
        sh->student_names.push_back(m.students[s].name);
    }
    try {
        std::shared_ptr<ov::Model> model = sh->core.read_model(m.path(model_file));
        if (m.backend == "openvino" && model_file == "model.xml") check_precision(m, *model, model_file);
        if (model->inputs().size() != 1)
            throw Error(ErrorCode::EngineFormat, m.path(model_file) + ": the model must have one input, it has " +
                                                     std::to_string(model->inputs().size()));
        ov::Output<ov::Node> in = model->input();
        if (!in.get_names().count(m.input_name))
            throw Error(ErrorCode::EngineFormat, m.path(model_file) + ": model input is not named \"" + m.input_name + "\"");
        ov::PartialShape ips = in.get_partial_shape();
        const std::int64_t want[3] = {3, m.image_h, m.image_w};
        bool ok = ips.rank().is_static() && ips.rank().get_length() == 4;
        for (int d = 0; ok && d < 3; ++d) ok = ips[d + 1].is_dynamic() || ips[d + 1].get_length() == want[d];
        if (!ok)
            throw Error(ErrorCode::EngineFormat, m.path(model_file) + ": model input has shape " + shape_str(ips) +
                                                     ", engine.json says (B, 3, " + std::to_string(m.image_h) + ", " +
                                                     std::to_string(m.image_w) + ")");
        if (ips[0].is_static() || ips[1].is_dynamic() || ips[2].is_dynamic() || ips[3].is_dynamic())
            model->reshape({{m.input_name, ov::PartialShape{-1, 3, m.image_h, m.image_w}}});  // any batch, fixed image
        for (std::size_t s = 0; s < m.teachers.size(); ++s) {
            for (const FeatureInfo* f : {&m.teachers[s], &m.students[s]}) {
                ov::PartialShape ps;
                try {
                    ps = model->output(f->name).get_partial_shape();
                } catch (const ov::Exception&) {
                    throw Error(ErrorCode::EngineFormat, m.path(model_file) + ": the model has no output named " + f->name);
                }
                check_port(m, ps, *f);
            }
        }
        ov::AnyMap& config = sh->config;
        const bool cpu = options.device == "CPU";
        if (cpu) {
            // one stream: the LATENCY hint alone (all threads on each request, the configuration
            // the Python OpenVINO path measured fastest on 2 cores); more: that many streams
            if (options.num_streams == 1) {
                config[ov::hint::performance_mode.name()] = ov::hint::PerformanceMode::LATENCY;
            } else {
                config[ov::hint::performance_mode.name()] = ov::hint::PerformanceMode::THROUGHPUT;
                config[ov::num_streams.name()] = ov::streams::Num(options.num_streams);
            }
            config[ov::inference_num_threads.name()] = info.num_threads;
            // threads not pinned to cores: on shared cores a pinned thread waits for its busy core and
            // the others wait for it at every layer (WRN50 RD, batch 1, 2 shared cores at load 2.4-4.5:
            // unpinned 1.14-1.25x faster, within 2 % when quiet; benchmarks/RESULTS.md, issue 4)
            config[ov::hint::enable_cpu_pinning.name()] = false;
            // f32 on CPUs whose default would be bf16 (AMX / AVX512-BF16), for every precision: an INT8
            // engine's FakeQuantize'd convolutions run in int8 whatever the hint, and the hint keeps its
            // other layers and the distance graph out of bf16 (as the Python backend)
            config[ov::hint::inference_precision.name()] = ov::element::f32;
        }
        sh->distances_in_graph = options.distances_in_network;
        sh->model = options.distances_in_network ? with_distances(model, m) : model;
        sh->device = options.device;
        sh->static_shapes = options.static_shapes;
        sh->input_name = m.input_name;
        sh->compiled_for(static_cast<std::size_t>(m.max_batch));  // compile now: errors surface at load
    } catch (const ov::Exception& e) {
        throw Error(ErrorCode::Backend, "OpenVINO could not load " + m.path(model_file) + " for device \"" +
                                            options.device + "\": " + e.what());
    }
    info.backend = "openvino";
    info.model_file = model_file;
    std::vector<std::unique_ptr<Worker>> workers;
    try {
        for (int i = 0; i < options.num_streams; ++i) workers.emplace_back(new OpenVINOWorker(sh));
    } catch (const ov::Exception& e) {
        throw Error(ErrorCode::Backend, std::string("OpenVINO could not create an inference request: ") + e.what());
    }
    return workers;
}

}  // namespace detail
}  // namespace cdd
