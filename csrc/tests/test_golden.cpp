// The C++ kernels and operator tables against the committed golden vectors of the Python
// reference (tests/golden/anomaly_map_operators.json, written by tests/golden/make_golden.py).
// This replaces keeping the two languages in sync by comment: a change of one blur tap, of the
// radius rule or of the boundary on either side fails here or in tests/test_golden.py.
// Tolerances: double-precision tables and the naive double map 1e-12; float tables 2e-7 (one
// float rounding of weights <= 1); the fp32 kernels 1e-5 of the largest value (docs/anomaly_map.md).
#include <cmath>
#include <string>
#include <vector>

#include "../src/operators.hpp"
#include "cdd/image.hpp"
#include "cdd/kernels.hpp"
#include "check.hpp"
#include "golden.hpp"
#include "naive_map.hpp"

using namespace cdd;
using namespace cdd::kernels;
using golden::at;
using golden::number;
using golden::numbers;
using golden::rel_to_max;

namespace {

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
    if (a.size() != b.size()) return 1e300;
    double e = 0;
    for (std::size_t i = 0; i < a.size(); ++i) e = std::max(e, std::fabs(a[i] - b[i]));
    return e;
}

/// Dense (out x in) matrix of resize windows.
std::vector<double> dense(const detail::AxisWeights& ax, int in, int out) {
    std::vector<double> m(static_cast<std::size_t>(out) * in, 0.0);
    for (int i = 0; i < out; ++i)
        for (int j = 0; j < ax.size[i]; ++j)
            m[static_cast<std::size_t>(i) * in + ax.start[i] + j] += ax.w[static_cast<std::size_t>(i) * ax.max_taps + j];
    return m;
}

}  // namespace

TEST_CASE("golden: blur taps and the radius rule") {
    for (const auto& e : at(golden::root(), "taps").array) {
        const double sigma = number(e, "sigma"), truncate = number(e, "truncate");
        const std::vector<double> want = numbers(at(e, "taps"));
        const std::vector<double> got = gaussian_taps(sigma, truncate);
        CHECK_MSG(got.size() == want.size(), "sigma " + std::to_string(sigma) + " truncate " + std::to_string(truncate) +
                                                 ": " + std::to_string(got.size()) + " taps, expected " +
                                                 std::to_string(want.size()));
        CHECK_MSG(max_abs_diff(got, want) <= 1e-12, "sigma " + std::to_string(sigma) + ": taps differ by " +
                                                        std::to_string(max_abs_diff(got, want)));
    }
    for (const auto& e : at(golden::root(), "radius_rule").array) {
        const double sigma = number(e, "sigma"), truncate = number(e, "truncate");
        CHECK_MSG(blur_radius(sigma, truncate) == static_cast<int>(number(e, "radius")),
                  "sigma " + std::to_string(sigma) + " truncate " + std::to_string(truncate) + ": radius " +
                      std::to_string(blur_radius(sigma, truncate)));
    }
}

TEST_CASE("golden: upsampling and blur matrices") {
    for (const auto& e : at(golden::root(), "upsample").array) {
        const int n_out = static_cast<int>(number(e, "n_out")), n_in = static_cast<int>(number(e, "n_in"));
        const double d = max_abs_diff(detail::blur_upsample_matrix(n_out, n_in, {}), numbers(at(e, "matrix")));
        CHECK_MSG(d <= 1e-12, std::to_string(n_out) + " x " + std::to_string(n_in) + ": differs by " + std::to_string(d));
    }
    for (const auto& e : at(golden::root(), "blur").array) {
        const int n = static_cast<int>(number(e, "n"));
        const std::vector<double> taps = gaussian_taps(number(e, "sigma"), number(e, "truncate"));
        const std::vector<double> want = numbers(at(e, "matrix"));
        const double d = max_abs_diff(detail::blur_matrix(n, taps), want);
        CHECK_MSG(d <= 1e-12, "blur n " + std::to_string(n) + ": differs by " + std::to_string(d));
        // G U with U = identity (n_in == n_out) is G itself
        const double d2 = max_abs_diff(detail::blur_upsample_matrix(n, n, taps), want);
        CHECK_MSG(d2 <= 1e-12, "blur-upsample n " + std::to_string(n) + ": differs by " + std::to_string(d2));
    }
}

TEST_CASE("golden: antialiased resize windows, trimmed and PyTorch's") {
    for (const auto& e : at(golden::root(), "resize").array) {
        const int in = static_cast<int>(number(e, "in")), out = static_cast<int>(number(e, "out"));
        const std::vector<double> want = numbers(at(e, "matrix"));
        for (bool trim : {true, false}) {
            const double d = max_abs_diff(dense(detail::antialias_weights(in, out, trim), in, out), want);
            CHECK_MSG(d <= 2e-7, std::to_string(in) + " -> " + std::to_string(out) + (trim ? " trimmed" : "") +
                                     ": differs by " + std::to_string(d));
        }
    }
}

TEST_CASE("golden: fused CPU anomaly map, add/mul, sigma 4 / 1.125 / none, 1 and 3 threads") {
    const golden::Maps g = golden::maps();
    const std::vector<FeaturePair> levels = g.levels();
    const std::size_t full = static_cast<std::size_t>(g.H) * g.W;
    for (const golden::MapCase& k : g.cases) {
        const AnomalyMap amap(g.H, g.W, g.sizes(), k.settings);
        for (int threads : {1, 3}) {
            std::vector<float> maps(g.batch * full), scores(g.batch);
            amap.run_batch(levels.data(), g.batch, maps.data(), scores.data(), threads);
            const double em = rel_to_max(maps, k.maps), es = rel_to_max(scores, k.scores);
            CHECK_MSG(em <= 1e-5, k.name + " threads " + std::to_string(threads) + ": map error " + std::to_string(em));
            CHECK_MSG(es <= 1e-5, k.name + " threads " + std::to_string(threads) + ": score error " + std::to_string(es));
        }
    }
}

TEST_CASE("golden: naive double-precision map (test reference) to 1e-12") {
    const golden::Maps g = golden::maps();
    const std::size_t full = static_cast<std::size_t>(g.H) * g.W;
    for (const golden::MapCase& k : g.cases)
        for (int b = 0; b < g.batch; ++b) {
            std::vector<FeaturePair> one = g.levels();
            for (std::size_t s = 0; s < one.size(); ++s) {
                const std::size_t per = static_cast<std::size_t>(g.scales[s][0]) * g.scales[s][1] * g.scales[s][2];
                one[s].teacher = g.teacher[s].data() + b * per;
                one[s].student = g.student[s].data() + b * per;
            }
            std::vector<double> map(full);
            const double score = testing::anomaly_map_naive(one.data(), one.size(), g.H, g.W, k.settings, map.data());
            const std::vector<double> want(k.maps.begin() + b * full, k.maps.begin() + (b + 1) * full);
            const double em = rel_to_max(map, want);
            CHECK_MSG(em <= 1e-12, k.name + " image " + std::to_string(b) + ": map error " + std::to_string(em));
            CHECK_CLOSE(score, k.scores[b], 1e-12, std::fabs(k.scores[b]));
        }
}

TEST_CASE("golden: pre-processing, RGB8/BGR8/Mono8, down- and up-scaling") {
    const auto& pp = at(golden::root(), "preprocess");
    const std::vector<double> mean = numbers(at(pp, "mean")), std_ = numbers(at(pp, "std"));
    Normalization norm;
    for (int c = 0; c < 3; ++c) {
        norm.mean[c] = static_cast<float>(mean.at(c));
        norm.std[c] = static_cast<float>(std_.at(c));
    }
    for (const auto& f : at(pp, "frames").array) {
        const std::string fmt = at(f, "format").string;
        const PixelFormat pf = fmt == "RGB8" ? PixelFormat::RGB8 : fmt == "BGR8" ? PixelFormat::BGR8 : PixelFormat::Mono8;
        const int h = static_cast<int>(number(f, "height")), w = static_cast<int>(number(f, "width"));
        const std::vector<double> out = numbers(at(f, "out")), px = numbers(at(f, "pixels"));
        std::vector<std::uint8_t> bytes(px.begin(), px.end());
        const int oh = static_cast<int>(out.at(0)), ow = static_cast<int>(out.at(1));
        std::vector<float> got(3 * static_cast<std::size_t>(oh) * ow);
        preprocess(ImageView::packed(bytes.data(), w, h, pf), oh, ow, norm, got.data());
        const double e = rel_to_max(got, numbers(at(f, "expected")));
        CHECK_MSG(e <= 1e-5, fmt + " " + std::to_string(h) + "x" + std::to_string(w) + ": error " + std::to_string(e));
    }
}

int main(int argc, char** argv) { return check::run_all(argc, argv); }
