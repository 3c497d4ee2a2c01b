// bench_native: images/s of the C++ engine, and the fused CPU post-processing against the
// unfused reference (anomaly_map_naive, double precision, one thread). JSON lines out.
//
//   bench_native [--engine DIR] [--batch 8] [--iters 5] [--threads 2] [--frame 256x256]
//
// Without --engine only the post-processing is measured, on wide_resnet50_2's feature shapes
// at 256x256: (256,64,64), (512,32,32), (1024,16,16). Built with -DCDD_BUILD_BENCHMARKS=ON.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "cdd/cdd.hpp"
#include "naive_map.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

template <class F>
std::vector<double> time_runs(int iters, F&& f) {
    f();  // warm-up (first inference compiles kernels for the shape)
    std::vector<double> t;
    for (int i = 0; i < iters; ++i) {
        const auto t0 = clock_type::now();
        f();
        t.push_back(seconds_since(t0));
    }
    return t;
}

}  // namespace

int main(int argc, char** argv) {
    std::string engine_dir;
    int batch = 8, iters = 5, threads = 2, fw = 0, fh = 0;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
        if (a == "--engine") engine_dir = next();
        else if (a == "--batch") batch = std::atoi(next().c_str());
        else if (a == "--iters") iters = std::atoi(next().c_str());
        else if (a == "--threads") threads = std::atoi(next().c_str());
        else if (a == "--frame") std::sscanf(next().c_str(), "%dx%d", &fw, &fh);
        else {
            std::fprintf(stderr, "usage: bench_native [--engine DIR] [--batch N] [--iters N] [--threads N] [--frame WxH]\n");
            return 2;
        }
    }
    if (batch < 1 || iters < 1) return 2;
    std::mt19937 rng(0);

    int H = 256, W = 256;
    std::vector<std::array<int, 3>> shapes = {{{256, 64, 64}}, {{512, 32, 32}}, {{1024, 16, 16}}};
    if (!engine_dir.empty()) {
        cdd::EngineOptions o;
        o.num_threads = threads;
        cdd::Engine engine(engine_dir, o);
        const auto& info = engine.info();
        H = info.image_height;
        W = info.image_width;
        shapes.clear();
        for (std::size_t s = 0; s < info.features.size() / 2; ++s)
            shapes.push_back({info.features[s].channels, info.features[s].height, info.features[s].width});
        if (fw <= 0 || fh <= 0) {
            fw = W;
            fh = H;
        }
        std::uniform_int_distribution<int> byte(0, 255);
        std::vector<std::vector<std::uint8_t>> frames(batch, std::vector<std::uint8_t>(static_cast<std::size_t>(fw) * fh * 3));
        std::vector<cdd::ImageView> views;
        for (auto& f : frames) {
            for (auto& b : f) b = static_cast<std::uint8_t>(byte(rng));
            views.push_back(cdd::ImageView::packed(f.data(), fw, fh, cdd::PixelFormat::RGB8));
        }
        const auto t = time_runs(iters, [&] { engine.score(views.data(), views.size()); });
        const double m = median(t);
        std::printf("{\"what\": \"engine\", \"backend\": \"%s\", \"batch\": %d, \"frame\": \"%dx%d\", \"threads\": %d, "
                    "\"s_per_batch_median\": %.4f, \"images_per_s\": %.3f}\n",
                    info.backend.c_str(), batch, fw, fh, threads, m, batch / m);
        std::fflush(stdout);
    }

    // post-processing alone on random features (student = teacher + noise)
    std::normal_distribution<float> g(0.f, 1.f);
    std::vector<std::vector<float>> t(shapes.size()), s(shapes.size());
    std::vector<std::pair<int, int>> hw;
    std::vector<cdd::kernels::FeaturePair> levels;
    for (std::size_t k = 0; k < shapes.size(); ++k) {
        const std::size_t n = static_cast<std::size_t>(batch) * shapes[k][0] * shapes[k][1] * shapes[k][2];
        t[k].resize(n);
        s[k].resize(n);
        for (std::size_t i = 0; i < n; ++i) {
            t[k][i] = g(rng);
            s[k][i] = t[k][i] + 0.5f * g(rng);
        }
        hw.emplace_back(shapes[k][1], shapes[k][2]);
        levels.push_back({t[k].data(), s[k].data(), cdd::kernels::DType::Float32, shapes[k][0], shapes[k][1], shapes[k][2]});
    }
    cdd::kernels::AnomalyMap amap(H, W, hw);
    std::vector<float> maps(static_cast<std::size_t>(batch) * H * W), scores(batch);
    const double fused = median(time_runs(iters, [&] { amap.run_batch(levels.data(), batch, maps.data(), scores.data(), threads); }));
    std::vector<double> ref(static_cast<std::size_t>(H) * W);
    const double naive = median(time_runs(std::max(1, iters / 2), [&] {
        std::vector<cdd::kernels::FeaturePair> one = levels;
        cdd::testing::anomaly_map_naive(one.data(), one.size(), H, W, cdd::kernels::MapSettings(), ref.data());
    }));  // one image
    std::printf("{\"what\": \"postprocess\", \"batch\": %d, \"map\": \"%dx%d\", \"threads\": %d, "
                "\"fused_ms_per_image\": %.3f, \"naive_ms_per_image\": %.3f, \"speedup\": %.1f}\n",
                batch, W, H, threads, 1e3 * fused / batch, 1e3 * naive, naive / (fused / batch));
    return 0;
}
