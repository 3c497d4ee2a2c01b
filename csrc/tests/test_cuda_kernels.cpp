// GPU pre/post-processing (the Triton AOT kernels launched from C++ through the CUDA driver
// API) against the CPU kernels, and against the Python reference's committed golden vectors
// (tests/golden/anomaly_map_operators.json, the same file test_golden.cpp checks on the CPU).
// Needs an NVIDIA GPU: exits 77 (ctest: skipped) without one. Also times the fused GPU
// anomaly map on wide_resnet50_2's feature shapes and checks it replays from a CUDA graph.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../src/cuda/driver.hpp"
#include "../src/cuda/gpu_kernels.hpp"
#include "cdd/kernels.hpp"
#include "check.hpp"
#ifdef CDD_GOLDEN_FILE
#include "golden.hpp"
#endif

using namespace cdd;
using namespace cdd::kernels;

namespace {

std::mt19937 g_rng(99);
cuda::Context* g_ctx = nullptr;
cuda::KernelSet* g_ks = nullptr;
int g_sms = 1;

double rel_err(const std::vector<float>& got, const std::vector<float>& ref) {
    double m = 0, e = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
        m = std::max(m, std::fabs(static_cast<double>(ref[i])));
        e = std::max(e, std::fabs(static_cast<double>(got[i]) - ref[i]));
    }
    return m > 0 ? e / m : e;
}

template <class T>
cuda::DeviceBuffer to_device(const std::vector<T>& v) {
    cuda::DeviceBuffer d(v.size() * sizeof(T));
    cuda::check(cuda::driver().memcpy_htod_async(d.get(), v.data(), v.size() * sizeof(T), nullptr), "HtoD");
    cuda::check(cuda::driver().stream_synchronize(nullptr), "sync");
    return d;
}

std::vector<float> to_host(CUdeviceptr p, std::size_t n, CUstream s) {
    std::vector<float> v(n);
    cuda::check(cuda::driver().memcpy_dtoh_async(v.data(), p, n * sizeof(float), s), "DtoH");
    cuda::check(cuda::driver().stream_synchronize(s), "sync");
    return v;
}

void check_preprocess(int h, int w, PixelFormat fmt, int oh, int ow, std::size_t pad) {
    const int c = channels(fmt);
    const std::size_t stride = static_cast<std::size_t>(w) * c + pad;
    std::uniform_int_distribution<int> byte(0, 255);
    std::vector<std::uint8_t> px(stride * h);
    for (auto& b : px) b = static_cast<std::uint8_t>(byte(g_rng));
    const ImageView v{px.data(), w, h, stride, fmt};
    Normalization n;
    std::vector<float> ref(3 * static_cast<std::size_t>(oh) * ow);
    preprocess(v, oh, ow, n, ref.data());
    cuda::Stream st;
    cuda::GpuPreprocess pre(*g_ks, oh, ow, n);
    cuda::DeviceBuffer staging, out(ref.size() * sizeof(float));
    pre.run(v, staging, out.get(), st.get());
    const double e = rel_err(to_host(out.get(), ref.size(), st.get()), ref);
    CHECK_MSG(e <= 1e-5, std::to_string(h) + "x" + std::to_string(w) + " " + to_string(fmt) + ": rel. err " + std::to_string(e));
}

struct Case {
    std::vector<std::array<int, 3>> shapes;
    int H, W, batch;
    MapMode mode;
    double sigma;
    DType dtype;
};

void check_map(const Case& k) {
    std::normal_distribution<float> g(0.f, 1.f);
    std::vector<std::vector<float>> t32, s32;
    std::vector<std::vector<std::uint16_t>> t16, s16;
    std::vector<cuda::DeviceBuffer> dt, ds;
    std::vector<cuda::FeatureGeometry> geo;
    std::vector<cuda::DeviceFeature> dev;
    std::vector<FeaturePair> host;
    std::vector<std::pair<int, int>> hw;
    for (const auto& sh : k.shapes) {
        const std::size_t n = static_cast<std::size_t>(k.batch) * sh[0] * sh[1] * sh[2];
        std::vector<float> a(n), b(n);
        for (std::size_t i = 0; i < n; ++i) {
            a[i] = g(g_rng);
            b[i] = a[i] + 0.6f * g(g_rng);
        }
        if (k.dtype == DType::Float16) {  // the same values as halves, via the IEEE bit pattern
            std::vector<std::uint16_t> ha(n), hb(n);
            auto to_half = [](float f) {  // round-to-nearest-even through float bits (normal range)
                std::uint32_t x;
                std::memcpy(&x, &f, 4);
                const std::uint32_t sign = (x >> 16) & 0x8000u;
                int e = static_cast<int>((x >> 23) & 0xFF) - 127 + 15;
                std::uint32_t m = x & 0x7FFFFFu;
                if (e <= 0) return static_cast<std::uint16_t>(sign);
                std::uint32_t hm = m >> 13, rest = m & 0x1FFFu;
                if (rest > 0x1000u || (rest == 0x1000u && (hm & 1u))) ++hm;
                if (hm == 0x400u) { hm = 0; ++e; }
                return static_cast<std::uint16_t>(sign | static_cast<std::uint32_t>(e) << 10 | hm);
            };
            for (std::size_t i = 0; i < n; ++i) {
                ha[i] = to_half(a[i]);
                hb[i] = to_half(b[i]);
            }
            t16.push_back(std::move(ha));
            s16.push_back(std::move(hb));
            dt.push_back(to_device(t16.back()));
            ds.push_back(to_device(s16.back()));
            host.push_back({t16.back().data(), s16.back().data(), DType::Float16, sh[0], sh[1], sh[2]});
        } else {
            t32.push_back(std::move(a));
            s32.push_back(std::move(b));
            dt.push_back(to_device(t32.back()));
            ds.push_back(to_device(s32.back()));
            host.push_back({t32.back().data(), s32.back().data(), DType::Float32, sh[0], sh[1], sh[2]});
        }
        geo.push_back({sh[0], sh[1], sh[2], k.dtype});
        dev.push_back({dt.back().get(), ds.back().get()});
        hw.emplace_back(sh[1], sh[2]);
    }
    MapSettings set;
    set.mode = k.mode;
    set.sigma = k.sigma;
    AnomalyMap cpu(k.H, k.W, hw, set);
    const std::size_t full = static_cast<std::size_t>(k.H) * k.W;
    std::vector<float> ref(k.batch * full), ref_scores(k.batch);
    cpu.run_batch(host.data(), k.batch, ref.data(), ref_scores.data(), 2);
    cuda::Stream st;
    cuda::GpuAnomalyMap gpu(*g_ks, k.H, k.W, geo, set, 4, g_sms);
    cuda::DeviceBuffer maps(k.batch * full * sizeof(float)), scores(k.batch * sizeof(float));
    gpu.run(dev.data(), k.batch, maps.get(), scores.get(), st.get());
    const double em = rel_err(to_host(maps.get(), k.batch * full, st.get()), ref);
    const double es = rel_err(to_host(scores.get(), k.batch, st.get()), ref_scores);
    const std::string what = std::string(k.mode == MapMode::Add ? "add" : "mul") + " sigma " + std::to_string(k.sigma) +
                             (k.dtype == DType::Float16 ? " fp16 " : " fp32 ") + std::to_string(k.H) + "x" + std::to_string(k.W);
    CHECK_MSG(em <= 1e-5, what + ": maps rel. err " + std::to_string(em));
    CHECK_MSG(es <= 1e-5, what + ": scores rel. err " + std::to_string(es));
}

}  // namespace

TEST_CASE("GPU preprocess equals the CPU kernel: down/up-scaling, formats, padded rows") {
    check_preprocess(97, 131, PixelFormat::RGB8, 64, 64, 0);
    check_preprocess(45, 33, PixelFormat::Mono8, 32, 48, 5);
    check_preprocess(1080, 1920, PixelFormat::BGR8, 256, 256, 64);
    check_preprocess(9, 11, PixelFormat::RGB8, 40, 32, 3);
    check_preprocess(256, 256, PixelFormat::RGB8, 256, 256, 0);
}

TEST_CASE("GPU anomaly map equals the CPU kernel: add/mul, blur/none, fp32/fp16, odd shapes") {
    check_map({{{{16, 16, 16}}, {{32, 8, 8}}, {{64, 4, 4}}}, 64, 64, 3, MapMode::Add, 4.0, DType::Float32});
    check_map({{{{7, 9, 11}}, {{5, 5, 6}}, {{3, 3, 3}}}, 37, 53, 2, MapMode::Add, 4.0, DType::Float32});
    check_map({{{{64, 64, 64}}, {{128, 32, 32}}, {{256, 16, 16}}}, 256, 256, 2, MapMode::Add, 4.0, DType::Float16});
    check_map({{{{16, 16, 16}}, {{32, 8, 8}}}, 64, 64, 2, MapMode::Mul, 4.0, DType::Float32});
    check_map({{{{6, 6, 6}}, {{6, 3, 3}}}, 33, 30, 1, MapMode::Mul, 0.0, DType::Float32});
    check_map({{{{12, 13, 7}}, {{20, 7, 4}}}, 29, 61, 4, MapMode::Add, 0.0, DType::Float32});
}

#ifdef CDD_GOLDEN_FILE
// The launchers against the Python reference's golden vectors (tests/golden/): the operator
// tables they upload, their band windows, split plan and workspace layout, end to end.
// Needs an NVIDIA GPU and AOT kernels; not run on machines without them (the test exits 77).
TEST_CASE("golden: GPU anomaly map and pre-processing equal the Python reference") {
    const golden::Maps g = golden::maps();
    std::vector<cuda::DeviceBuffer> bufs;
    std::vector<cuda::FeatureGeometry> geo;
    std::vector<cuda::DeviceFeature> dev;
    for (std::size_t s = 0; s < g.scales.size(); ++s) {
        bufs.push_back(to_device(g.teacher[s]));
        bufs.push_back(to_device(g.student[s]));
        geo.push_back({g.scales[s][0], g.scales[s][1], g.scales[s][2], DType::Float32});
        dev.push_back({bufs[bufs.size() - 2].get(), bufs.back().get()});
    }
    const std::size_t full = static_cast<std::size_t>(g.H) * g.W;
    for (const golden::MapCase& k : g.cases) {
        cuda::Stream st;
        cuda::GpuAnomalyMap gpu(*g_ks, g.H, g.W, geo, k.settings, g.batch, g_sms);
        cuda::DeviceBuffer maps(g.batch * full * sizeof(float)), scores(g.batch * sizeof(float));
        gpu.run(dev.data(), g.batch, maps.get(), scores.get(), st.get());
        const double em = golden::rel_to_max(to_host(maps.get(), g.batch * full, st.get()), k.maps);
        const double es = golden::rel_to_max(to_host(scores.get(), g.batch, st.get()), k.scores);
        CHECK_MSG(em <= 1e-5, k.name + ": GPU map error " + std::to_string(em));
        CHECK_MSG(es <= 1e-5, k.name + ": GPU score error " + std::to_string(es));
    }
    const auto& pp = golden::at(golden::root(), "preprocess");
    const std::vector<double> mean = golden::numbers(golden::at(pp, "mean")), sd = golden::numbers(golden::at(pp, "std"));
    Normalization norm;
    for (int c = 0; c < 3; ++c) {
        norm.mean[c] = static_cast<float>(mean.at(c));
        norm.std[c] = static_cast<float>(sd.at(c));
    }
    for (const auto& f : golden::at(pp, "frames").array) {
        const std::string fmt = golden::at(f, "format").string;
        const PixelFormat pf = fmt == "RGB8" ? PixelFormat::RGB8 : fmt == "BGR8" ? PixelFormat::BGR8 : PixelFormat::Mono8;
        const int h = static_cast<int>(golden::number(f, "height")), w = static_cast<int>(golden::number(f, "width"));
        const std::vector<double> out = golden::numbers(golden::at(f, "out")), px = golden::numbers(golden::at(f, "pixels"));
        const std::vector<std::uint8_t> bytes(px.begin(), px.end());
        const int oh = static_cast<int>(out.at(0)), ow = static_cast<int>(out.at(1));
        cuda::Stream st;
        cuda::GpuPreprocess pre(*g_ks, oh, ow, norm);
        cuda::DeviceBuffer staging, dst(3 * static_cast<std::size_t>(oh) * ow * sizeof(float));
        pre.run(ImageView::packed(bytes.data(), w, h, pf), staging, dst.get(), st.get());
        const double e = golden::rel_to_max(to_host(dst.get(), 3 * static_cast<std::size_t>(oh) * ow, st.get()),
                                            golden::numbers(golden::at(f, "expected")));
        CHECK_MSG(e <= 1e-5, fmt + " pre-processing on the GPU: error " + std::to_string(e));
    }
}
#endif

TEST_CASE("GPU anomaly map replays from a CUDA graph; timing on wide_resnet50_2 shapes") {
    const int B = 8, H = 256, W = 256;
    const int shapes[3][3] = {{256, 64, 64}, {512, 32, 32}, {1024, 16, 16}};
    for (DType dt : {DType::Float32, DType::Float16}) {
        std::vector<cuda::DeviceBuffer> bufs;
        std::vector<cuda::FeatureGeometry> geo;
        std::vector<cuda::DeviceFeature> dev;
        std::size_t bytes_read = 0;
        std::normal_distribution<float> g(0.f, 1.f);
        for (const auto& sh : shapes) {
            const std::size_t n = static_cast<std::size_t>(B) * sh[0] * sh[1] * sh[2];
            const std::size_t es = dt == DType::Float16 ? 2 : 4;
            std::vector<std::uint8_t> raw(n * es);
            for (std::size_t i = 0; i < n; ++i) {  // random fp32 / fp16 bit patterns of moderate values
                if (es == 4) {
                    const float f = g(g_rng);
                    std::memcpy(&raw[i * 4], &f, 4);
                } else {
                    const std::uint16_t hbits = static_cast<std::uint16_t>((g_rng() & 0x83FFu) | 0x3800u);
                    std::memcpy(&raw[i * 2], &hbits, 2);
                }
            }
            bufs.push_back(to_device(raw));
            const std::size_t t_idx = bufs.size() - 1;
            for (auto& b : raw) b ^= static_cast<std::uint8_t>(g_rng() & 0x03);  // student: small perturbation
            bufs.push_back(to_device(raw));
            geo.push_back({sh[0], sh[1], sh[2], dt});
            dev.push_back({bufs[t_idx].get(), bufs.back().get()});
            bytes_read += 2 * n * es;
        }
        cuda::Stream st;
        cuda::GpuAnomalyMap gpu(*g_ks, H, W, geo, MapSettings(), B, g_sms);
        cuda::DeviceBuffer maps(static_cast<std::size_t>(B) * H * W * 4), scores(B * 4), maps2(maps.bytes()), scores2(B * 4);
        gpu.run(dev.data(), B, maps.get(), scores.get(), st.get());
        const cuda::Driver& d = cuda::driver();
        CUgraph graph = nullptr;
        CUgraphExec exec = nullptr;
        cuda::check(d.stream_begin_capture(st.get(), CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), "capture");
        gpu.run(dev.data(), B, maps2.get(), scores2.get(), st.get());
        cuda::check(d.stream_end_capture(st.get(), &graph), "end capture");
        cuda::check(d.graph_instantiate(&exec, graph, 0), "instantiate");
        cuda::check(d.graph_launch(exec, st.get()), "graph launch");
        const auto a = to_host(scores.get(), B, st.get()), b = to_host(scores2.get(), B, st.get());
        CHECK_MSG(a == b, "graph replay gives other scores");
        for (int i = 0; i < 5; ++i) cuda::check(d.graph_launch(exec, st.get()), "graph launch");
        st.synchronize();
        const int iters = 50;
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < iters; ++i) cuda::check(d.graph_launch(exec, st.get()), "graph launch");
        st.synchronize();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
        std::printf("{\"what\": \"gpu_postprocess\", \"dtype\": \"%s\", \"batch\": %d, \"map\": \"%dx%d\", "
                    "\"us_per_batch\": %.1f, \"us_per_image\": %.2f, \"feature_GB_per_s\": %.0f}\n",
                    dt == DType::Float16 ? "fp16" : "fp32", B, W, H, 1e6 * s, 1e6 * s / B, bytes_read / s / 1e9);
        d.graph_exec_destroy(exec);
        d.graph_destroy(graph);
    }
}

int main(int argc, char** argv) {
    if (!cuda::available()) {
        std::printf("no CUDA driver or device: skipped\n");
        return 77;
    }
    if (!cuda::aot_kernels_embedded()) {
        std::printf("this build embeds no AOT kernels: skipped\n");
        return 77;
    }
    cuda::Context ctx(0);
    cuda::check(cuda::driver().device_get_attribute(&g_sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, ctx.device()), "sms");
    cuda::KernelSet ks(ctx.compute_capability());
    g_ctx = &ctx;
    g_ks = &ks;
    std::printf("device sm_%d, %d SMs\n", ctx.compute_capability(), g_sms);
    return check::run_all(argc, argv);
}
