// CPU kernels against independent double-precision references: the antialiased resize +
// normalisation, and the fused anomaly map against the unfused textbook pipeline, on random
// inputs and odd shapes (docs/anomaly_map.md: fp32 paths within 1e-5 relative).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "cdd/kernels.hpp"
#include "cdd/limits.hpp"
#include "check.hpp"
#include "naive_map.hpp"

using namespace cdd;
using namespace cdd::kernels;
using cdd::detail::half_to_float;
using cdd::detail::reflect_index;
using cdd::testing::anomaly_map_naive;

namespace {

std::mt19937& rng() {
    static std::mt19937 g(1234);
    return g;
}

std::vector<std::uint8_t> random_bytes(std::size_t n) {
    std::uniform_int_distribution<int> d(0, 255);
    std::vector<std::uint8_t> v(n);
    for (auto& x : v) x = static_cast<std::uint8_t>(d(rng()));
    return v;
}

std::vector<float> random_floats(std::size_t n, float lo = -1.f, float hi = 1.f) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng());
    return v;
}

/// 1-D weights of PyTorch's antialiased bilinear resize, written from its definition:
/// output i covers input [scale*i, scale*(i+1)); a triangle of half-width max(scale, 1)
/// centred there, sampled at input pixel centres inside the support, normalised.
std::vector<std::vector<double>> ref_weights(int in, int out) {
    const double scale = static_cast<double>(in) / out;
    const double support = std::max(scale, 1.0);
    std::vector<std::vector<double>> w(out, std::vector<double>(in, 0.0));
    for (int i = 0; i < out; ++i) {
        const double center = scale * (i + 0.5);
        const long lo = std::max(0L, static_cast<long>(center - support + 0.5));
        const long hi = std::min(static_cast<long>(in), static_cast<long>(center + support + 0.5));
        double total = 0;
        for (long j = lo; j < hi; ++j) {
            const double x = std::fabs((j - center + 0.5) / support);
            w[i][j] = std::max(0.0, 1.0 - x);
            total += w[i][j];
        }
        for (long j = lo; j < hi; ++j) w[i][j] /= total;
    }
    return w;
}

/// Reference pre-processing in double: (3, oh, ow) normalised RGB.
std::vector<double> ref_preprocess(const ImageView& v, int oh, int ow, const Normalization& n) {
    const int c = channels(v.format);
    const auto wy = ref_weights(v.height, oh), wx = ref_weights(v.width, ow);
    std::vector<double> out(3 * static_cast<std::size_t>(oh) * ow, 0.0);
    for (int ch = 0; ch < 3; ++ch) {
        int src_c = c == 1 ? 0 : ch;
        if (v.format == PixelFormat::BGR8) src_c = 2 - ch;
        for (int oy = 0; oy < oh; ++oy)
            for (int ox = 0; ox < ow; ++ox) {
                double acc = 0;
                for (int y = 0; y < v.height; ++y) {
                    if (wy[oy][y] == 0) continue;
                    for (int x = 0; x < v.width; ++x)
                        if (wx[ox][x] != 0)
                            acc += wy[oy][y] * wx[ox][x] * v.data[y * v.stride_bytes + x * c + src_c];
                }
                out[(static_cast<std::size_t>(ch) * oh + oy) * ow + ox] = (acc / 255.0 - n.mean[ch]) / n.std[ch];
            }
    }
    return out;
}

double max_abs(const std::vector<double>& v) {
    double m = 0;
    for (double x : v) m = std::max(m, std::fabs(x));
    return m;
}

void check_preprocess(int h, int w, PixelFormat fmt, int oh, int ow, std::size_t pad, int threads) {
    const int c = channels(fmt);
    const std::size_t stride = static_cast<std::size_t>(w) * c + pad;
    std::vector<std::uint8_t> buf = random_bytes(stride * h);
    ImageView v{buf.data(), w, h, stride, fmt};
    Normalization n;
    std::vector<float> out(3 * static_cast<std::size_t>(oh) * ow);
    preprocess(v, oh, ow, n, out.data(), threads);
    const std::vector<double> ref = ref_preprocess(v, oh, ow, n);
    const double scale = max_abs(ref);
    double worst = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::fabs(out[i] - ref[i]) / scale);
    CHECK_MSG(worst <= 1e-5, std::to_string(h) + "x" + std::to_string(w) + " " + to_string(fmt) + " -> " +
                                 std::to_string(oh) + "x" + std::to_string(ow) + ": rel. err " + std::to_string(worst));
}

std::vector<FeaturePair> make_levels(const std::vector<std::vector<float>>& t, const std::vector<std::vector<float>>& s,
                                     const std::vector<std::array<int, 3>>& shapes) {
    std::vector<FeaturePair> levels;
    for (std::size_t i = 0; i < shapes.size(); ++i)
        levels.push_back({t[i].data(), s[i].data(), DType::Float32, shapes[i][0], shapes[i][1], shapes[i][2]});
    return levels;
}

void check_map(const std::vector<std::array<int, 3>>& shapes, int H, int W, MapMode mode, double sigma, int batch,
               int threads) {
    std::vector<std::vector<float>> t, s;
    std::vector<std::pair<int, int>> hw;
    for (const auto& sh : shapes) {
        const std::size_t n = static_cast<std::size_t>(batch) * sh[0] * sh[1] * sh[2];
        t.push_back(random_floats(n));
        // student = teacher + noise, so distances are small (0..0.5) as for a trained model
        std::vector<float> noise = random_floats(n, -0.5f, 0.5f);
        std::vector<float> st(n);
        for (std::size_t i = 0; i < n; ++i) st[i] = t.back()[i] + noise[i];
        s.push_back(std::move(st));
        hw.emplace_back(sh[1], sh[2]);
    }
    MapSettings set;
    set.mode = mode;
    set.sigma = sigma;
    AnomalyMap amap(H, W, hw, set);
    std::vector<FeaturePair> levels = make_levels(t, s, shapes);
    std::vector<float> maps(static_cast<std::size_t>(batch) * H * W), scores(batch);
    amap.run_batch(levels.data(), batch, maps.data(), scores.data(), threads);
    for (int b = 0; b < batch; ++b) {
        std::vector<FeaturePair> one = levels;
        for (std::size_t k = 0; k < one.size(); ++k) {
            const std::size_t off = static_cast<std::size_t>(b) * shapes[k][0] * shapes[k][1] * shapes[k][2];
            one[k].teacher = t[k].data() + off;
            one[k].student = s[k].data() + off;
        }
        std::vector<double> ref(static_cast<std::size_t>(H) * W);
        const double ref_score = anomaly_map_naive(one.data(), one.size(), H, W, set, ref.data());
        const double scale = max_abs(ref);
        double worst = 0;
        for (std::size_t i = 0; i < ref.size(); ++i)
            worst = std::max(worst, std::fabs(maps[b * ref.size() + i] - ref[i]) / scale);
        const std::string what = std::string(mode == MapMode::Add ? "add" : "mul") + " sigma " + std::to_string(sigma) +
                                 " " + std::to_string(H) + "x" + std::to_string(W) + " image " + std::to_string(b);
        CHECK_MSG(worst <= 1e-5, what + ": map rel. err " + std::to_string(worst));
        CHECK_CLOSE(scores[b], ref_score, 1e-5, std::fabs(ref_score));
    }
}

}  // namespace

TEST_CASE("preprocess: down-scaling, odd sizes, all formats, padded rows") {
    check_preprocess(97, 131, PixelFormat::RGB8, 32, 32, 0, 1);
    check_preprocess(45, 33, PixelFormat::Mono8, 16, 24, 5, 1);
    check_preprocess(200, 150, PixelFormat::BGR8, 37, 29, 3, 2);
    check_preprocess(1001, 7, PixelFormat::RGB8, 13, 5, 1, 3);
}

TEST_CASE("preprocess: up-scaling and identity size (the same-size path: every format, padding, threads)") {
    check_preprocess(9, 11, PixelFormat::RGB8, 32, 40, 0, 1);
    check_preprocess(31, 31, PixelFormat::BGR8, 31, 31, 7, 2);
    check_preprocess(64, 47, PixelFormat::RGB8, 64, 47, 5, 1);
    check_preprocess(33, 70, PixelFormat::Mono8, 33, 70, 3, 2);
    check_preprocess(1, 1, PixelFormat::RGB8, 1, 1, 0, 1);
    check_preprocess(5, 3, PixelFormat::BGR8, 5, 3, 1, 8);  // more threads than rows
    check_preprocess(1, 1, PixelFormat::Mono8, 4, 3, 0, 1);
}

TEST_CASE("preprocess: BGR is RGB with swapped channels, Mono8 is RGB with equal channels") {
    const int h = 23, w = 17, oh = 12, ow = 9;
    std::vector<std::uint8_t> rgb = random_bytes(static_cast<std::size_t>(h) * w * 3), bgr(rgb.size());
    for (std::size_t i = 0; i < rgb.size(); i += 3) {
        bgr[i] = rgb[i + 2];
        bgr[i + 1] = rgb[i + 1];
        bgr[i + 2] = rgb[i];
    }
    Normalization n;
    std::vector<float> a(3 * oh * ow), b(a.size());
    preprocess(ImageView::packed(rgb.data(), w, h, PixelFormat::RGB8), oh, ow, n, a.data());
    preprocess(ImageView::packed(bgr.data(), w, h, PixelFormat::BGR8), oh, ow, n, b.data());
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
    std::vector<std::uint8_t> mono = random_bytes(static_cast<std::size_t>(h) * w), tri(mono.size() * 3);
    for (std::size_t i = 0; i < mono.size(); ++i) tri[3 * i] = tri[3 * i + 1] = tri[3 * i + 2] = mono[i];
    preprocess(ImageView::packed(mono.data(), w, h, PixelFormat::Mono8), oh, ow, n, a.data());
    preprocess(ImageView::packed(tri.data(), w, h, PixelFormat::RGB8), oh, ow, n, b.data());
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

TEST_CASE("resize_plane: matches the same filter as preprocess") {
    const int h = 19, w = 27, oh = 50, ow = 8;
    std::vector<float> src = random_floats(static_cast<std::size_t>(h) * (w + 3), 0.f, 2.f), dst(oh * ow);
    resize_plane(src.data(), h, w, w + 3, dst.data(), oh, ow, 2);
    const auto wy = ref_weights(h, oh), wx = ref_weights(w, ow);
    double worst = 0;
    for (int i = 0; i < oh; ++i)
        for (int j = 0; j < ow; ++j) {
            double acc = 0;
            for (int y = 0; y < h; ++y)
                for (int x = 0; x < w; ++x) acc += wy[i][y] * wx[j][x] * src[y * (w + 3) + x];
            worst = std::max(worst, std::fabs(dst[i * ow + j] - acc) / 2.0);
        }
    CHECK_MSG(worst <= 1e-5, "rel. err " + std::to_string(worst));
}

TEST_CASE("anomaly map add: RD-like scales, odd sizes, sigma 4 / 1.5 / none, threads") {
    check_map({{{16, 16, 16}}, {{32, 8, 8}}, {{64, 4, 4}}}, 64, 64, MapMode::Add, 4.0, 3, 1);
    check_map({{{7, 9, 11}}, {{5, 5, 6}}, {{3, 3, 3}}}, 37, 53, MapMode::Add, 4.0, 2, 3);
    check_map({{{12, 13, 7}}, {{20, 7, 4}}}, 29, 61, MapMode::Add, 1.5, 1, 2);
    check_map({{{8, 10, 10}}, {{8, 5, 5}}}, 40, 40, MapMode::Add, 0.0, 2, 1);
    check_map({{{4, 1, 1}}, {{4, 2, 3}}}, 9, 1, MapMode::Add, 4.0, 1, 1);  // 1x1 feature, one-column map
}

TEST_CASE("anomaly map mul: odd sizes, blur and none") {
    check_map({{{16, 16, 16}}, {{32, 8, 8}}, {{64, 4, 4}}}, 64, 64, MapMode::Mul, 4.0, 2, 2);
    check_map({{{7, 9, 11}}, {{5, 5, 6}}, {{3, 3, 3}}}, 37, 53, MapMode::Mul, 4.0, 1, 1);
    check_map({{{6, 6, 6}}, {{6, 3, 3}}}, 33, 30, MapMode::Mul, 0.0, 3, 2);
}

TEST_CASE("anomaly map: float16 features equal the float32 path on the same values") {
    const int C = 24, h = 8, w = 8;
    std::vector<std::uint16_t> t16(C * h * w), s16(C * h * w);
    std::vector<float> t32(C * h * w), s32(C * h * w);
    std::uniform_int_distribution<int> mant(0, 1023), ex(10, 17), sg(0, 1);
    for (std::size_t i = 0; i < t16.size(); ++i) {
        t16[i] = static_cast<std::uint16_t>(sg(rng()) << 15 | ex(rng()) << 10 | mant(rng()));
        s16[i] = static_cast<std::uint16_t>(sg(rng()) << 15 | ex(rng()) << 10 | mant(rng()));
        t32[i] = half_to_float(t16[i]);
        s32[i] = half_to_float(s16[i]);
    }
    AnomalyMap amap(32, 32, {{h, w}});
    FeaturePair a{t16.data(), s16.data(), DType::Float16, C, h, w}, b{t32.data(), s32.data(), DType::Float32, C, h, w};
    std::vector<float> ma(32 * 32), mb(32 * 32);
    const float sa = amap(&a, ma.data()), sb = amap(&b, mb.data());
    CHECK(sa == sb);
    CHECK(std::memcmp(ma.data(), mb.data(), ma.size() * sizeof(float)) == 0);
}

TEST_CASE("helpers: half_to_float, gaussian_taps, reflect_index") {
    CHECK(half_to_float(0x3C00) == 1.0f);
    CHECK(half_to_float(0xC000) == -2.0f);
    CHECK(half_to_float(0x7BFF) == 65504.0f);
    CHECK(half_to_float(0x0001) == std::ldexp(1.0f, -24));
    CHECK(std::isinf(half_to_float(0x7C00)));
    const auto taps = gaussian_taps(4.0, 4.0);
    CHECK(taps.size() == 33);
    double sum = 0;
    for (double v : taps) sum += v;
    CHECK_CLOSE(sum, 1.0, 1e-12, 1.0);
    CHECK(taps[16] > taps[15] && taps[15] == taps[17]);
    // scipy reflect: ... c b a | a b c ... (edge repeated), period 2n
    const int n = 4;
    const int want[] = {1, 0, 0, 1, 2, 3, 3, 2, 1, 0, 0};
    for (int i = -2; i <= 8; ++i) CHECK(reflect_index(i, n) == want[i + 2]);
    CHECK(reflect_index(-7, 1) == 0);
}

TEST_CASE("kernel errors: bad views, sizes and features are cdd::Error, never a crash") {
    std::vector<std::uint8_t> px(64 * 3);
    std::vector<float> out(3 * 8 * 8);
    Normalization n;
    REQUIRE_THROWS(preprocess(ImageView{nullptr, 8, 8, 24, PixelFormat::RGB8}, 8, 8, n, out.data()),
                   ErrorCode::InvalidArgument, "null");
    REQUIRE_THROWS(preprocess(ImageView{px.data(), 0, 8, 24, PixelFormat::RGB8}, 8, 8, n, out.data()),
                   ErrorCode::InvalidArgument, "zero-sized");
    REQUIRE_THROWS(preprocess(ImageView{px.data(), 8, 8, 23, PixelFormat::RGB8}, 8, 8, n, out.data()),
                   ErrorCode::InvalidArgument, "stride");
    REQUIRE_THROWS(preprocess(ImageView{px.data(), 8, 8, 24, static_cast<PixelFormat>(7)}, 8, 8, n, out.data()),
                   ErrorCode::InvalidArgument, "unknown pixel format");
    REQUIRE_THROWS(preprocess(ImageView{px.data(), 8, 8, 24, PixelFormat::RGB8}, 0, 8, n, out.data()),
                   ErrorCode::InvalidArgument, "positive");
    REQUIRE_THROWS(preprocess(ImageView{px.data(), 8, 8, 24, PixelFormat::RGB8}, 8, 8, n, nullptr),
                   ErrorCode::InvalidArgument, "null");
    REQUIRE_THROWS(AnomalyMap(0, 8, {{2, 2}}), ErrorCode::InvalidArgument, "positive");
    REQUIRE_THROWS(AnomalyMap(8, 8, {}), ErrorCode::InvalidArgument, "at least one");
    REQUIRE_THROWS(AnomalyMap(8, 8, {{2, 0}}), ErrorCode::InvalidArgument, "positive");
    AnomalyMap amap(8, 8, {{2, 2}});
    std::vector<float> f(4 * 2 * 2), m(64);
    FeaturePair bad{f.data(), nullptr, DType::Float32, 4, 2, 2};
    REQUIRE_THROWS(amap(&bad, m.data()), ErrorCode::InvalidArgument, "null");
    FeaturePair wrong{f.data(), f.data(), DType::Float32, 4, 2, 1};
    REQUIRE_THROWS(amap(&wrong, m.data()), ErrorCode::InvalidArgument, "expected");
    REQUIRE_THROWS(resize_plane(nullptr, 2, 2, 2, m.data(), 4, 4), ErrorCode::InvalidArgument, "null");
}

namespace {

/// Sparse 1-D windows of ref_weights (first input index, weights): for millions of inputs.
std::vector<std::pair<long, std::vector<double>>> ref_windows(long in, int out) {
    const double scale = static_cast<double>(in) / out;
    const double support = std::max(scale, 1.0);
    std::vector<std::pair<long, std::vector<double>>> w(out);
    for (int i = 0; i < out; ++i) {
        const double center = scale * (i + 0.5);
        const long lo = std::max(0L, static_cast<long>(center - support + 0.5));
        const long hi = std::min(in, static_cast<long>(center + support + 0.5));
        double total = 0;
        w[i].first = lo;
        for (long j = lo; j < hi; ++j) {
            w[i].second.push_back(std::max(0.0, 1.0 - std::fabs((j - center + 0.5) / support)));
            total += w[i].second.back();
        }
        for (double& x : w[i].second) x /= total;
    }
    return w;
}

/// Mono8 (h x w) -> (oh x ow) in double through the sparse windows (height pass first: the
/// filter is separable, and the reference need not follow the kernel's order).
double worst_mono_error(int h, int w, int oh, int ow) {
    const std::vector<std::uint8_t> px = random_bytes(static_cast<std::size_t>(h) * w);
    const ImageView v = ImageView::packed(px.data(), w, h, PixelFormat::Mono8);
    Normalization n;
    std::vector<float> out(3 * static_cast<std::size_t>(oh) * ow);
    preprocess(v, oh, ow, n, out.data(), 2);
    const auto wy = ref_windows(h, oh), wx = ref_windows(w, ow);
    std::vector<double> ref(out.size());
    std::vector<double> col(w);
    for (int oy = 0; oy < oh; ++oy) {
        std::fill(col.begin(), col.end(), 0.0);
        for (std::size_t k = 0; k < wy[oy].second.size(); ++k)
            for (int x = 0; x < w; ++x) col[x] += wy[oy].second[k] * px[(wy[oy].first + k) * w + x];
        for (int ox = 0; ox < ow; ++ox) {
            double acc = 0;
            for (std::size_t k = 0; k < wx[ox].second.size(); ++k) acc += wx[ox].second[k] * col[wx[ox].first + k];
            for (int ch = 0; ch < 3; ++ch)
                ref[(static_cast<std::size_t>(ch) * oh + oy) * ow + ox] = (acc / 255.0 - n.mean[ch]) / n.std[ch];
        }
    }
    const double scale = max_abs(ref);
    double worst = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::fabs(out[i] - ref[i]) / scale);
    return worst;
}

std::vector<float> nan_map_score(MapMode mode, double sigma, float bad, std::size_t where) {
    const std::vector<std::array<int, 3>> shapes = {{8, 6, 7}, {16, 3, 4}};
    std::vector<std::vector<float>> t, s;
    std::vector<std::pair<int, int>> hw;
    for (const auto& sh : shapes) {
        const std::size_t n = static_cast<std::size_t>(sh[0]) * sh[1] * sh[2];
        t.push_back(random_floats(n));
        s.push_back(random_floats(n));
        hw.emplace_back(sh[1], sh[2]);
    }
    t[0][where] = bad;  // one feature value of one pixel of scale 0
    MapSettings set;
    set.mode = mode;
    set.sigma = sigma;
    AnomalyMap amap(200, 220, hw, set);
    const std::vector<FeaturePair> levels = make_levels(t, s, shapes);
    std::vector<float> map(200 * 220);
    const float score = amap(levels.data(), map.data(), 1);
    std::size_t non_finite = 0;
    for (float x : map) non_finite += !std::isfinite(x);
    return {score, static_cast<float>(non_finite)};
}

}  // namespace

TEST_CASE("limits: blur radius (sigma * truncate up to 1e18), map and output sizes before allocation") {
    // issue 16 item 2: int(truncate * sigma + 0.5) overflowed and segfaulted
    for (const auto& st : std::vector<std::pair<double, double>>{{1e9, 4.0}, {4.0, 1e9}, {1e9, 1e9}, {65.0, 16.0}}) {
        REQUIRE_THROWS(gaussian_taps(st.first, st.second), ErrorCode::InvalidArgument, "MAX_BLUR_RADIUS = 1024");
        MapSettings set;
        set.sigma = st.first;
        set.truncate = st.second;
        REQUIRE_THROWS(AnomalyMap(64, 64, {{8, 8}}, set), ErrorCode::InvalidArgument, "MAX_BLUR_RADIUS");
        std::vector<float> t(8 * 8, 1.f), u(8 * 8, 0.5f);
        FeaturePair f{t.data(), u.data(), DType::Float32, 1, 8, 8};
        std::vector<double> m(64 * 64);
        REQUIRE_THROWS(anomaly_map_naive(&f, 1, 64, 64, set, m.data()), ErrorCode::InvalidArgument, "MAX_BLUR_RADIUS");
    }
    CHECK(blur_radius(64.0, 16.0) == 1024);  // the largest the manifest allows
    CHECK(gaussian_taps(64.0, 16.0).size() == 2049);
    CHECK(blur_radius(4.0, 4.0) == 16);
    for (double bad : {0.0, -1.0, std::nan(""), HUGE_VAL})
        REQUIRE_THROWS(gaussian_taps(bad, 4.0), ErrorCode::InvalidArgument, "sigma");
    REQUIRE_THROWS(gaussian_taps(4.0, std::nan("")), ErrorCode::InvalidArgument, "truncate");
    MapSettings inf_eps;
    inf_eps.eps = HUGE_VAL;
    REQUIRE_THROWS(AnomalyMap(64, 64, {{8, 8}}, inf_eps), ErrorCode::InvalidArgument, "finite");
    // sizes: refused before the matrices / maps are allocated
    REQUIRE_THROWS(AnomalyMap(4097, 4096, {{8, 8}}), ErrorCode::InvalidArgument, "MAX_MAP_PIXELS");
    REQUIRE_THROWS(AnomalyMap(1 << 30, 1 << 30, {{8, 8}}), ErrorCode::InvalidArgument, "MAX_MAP_PIXELS");
    REQUIRE_THROWS(AnomalyMap(1 << 24, 1, {{1 << 24, 1}}), ErrorCode::InvalidArgument, "MAX_MAP_PIXELS");
    std::vector<std::uint8_t> px(16 * 16 * 3, 1);
    const ImageView v = ImageView::packed(px.data(), 16, 16, PixelFormat::RGB8);
    std::vector<float> out(3 * 4 * 4);
    REQUIRE_THROWS(preprocess(v, 1 << 20, 1 << 20, Normalization(), out.data()), ErrorCode::InvalidArgument,
                   "MAX_MAP_PIXELS");
    REQUIRE_THROWS(resize_plane(out.data(), 4, 4, 4, out.data(), 1 << 20, 1 << 20), ErrorCode::InvalidArgument,
                   "MAX_FRAME_PIXELS");
    // a frame view beyond 2**28 pixels is refused by its header alone (nothing is read)
    ImageView huge = ImageView::packed(px.data(), 1 << 15, (1 << 13) + 1, PixelFormat::Mono8);
    REQUIRE_THROWS(validate(huge), ErrorCode::InvalidArgument, "MAX_FRAME_PIXELS");
    CHECK(limits::kMaxFramePixels == (1ull << 28) && limits::kMaxMapPixels == 4096ull * 4096 &&
          limits::kMaxBlurRadius == 1024);
}

TEST_CASE("anomaly map: one NaN or inf feature value makes the score NaN, never a finite max") {
    // std::max skips NaN: the old kernel scored a partly-NaN map by its finite part
    for (MapMode mode : {MapMode::Add, MapMode::Mul})
        for (double sigma : {4.0, 0.0})
            for (float bad : {std::nanf(""), HUGE_VALF}) {
                const std::vector<float> r = nan_map_score(mode, sigma, bad, 5);
                CHECK_MSG(std::isnan(r[0]), std::string(mode == MapMode::Add ? "add" : "mul") + " sigma " +
                                                std::to_string(sigma) + ": score " + std::to_string(r[0]));
                CHECK(r[1] > 0 && r[1] < 200 * 220);  // a part of the map, not all of it
            }
    CHECK(std::isfinite(nan_map_score(MapMode::Add, 4.0, 0.25f, 5)[0]));
}

TEST_CASE("preprocess: huge antialias windows (very wide / tall frames) stay within 1e-5 of double") {
    // issue 16 item 8: float sums over ~10^4..10^6 taps drifted by 1e-4 relative
    const double wide = worst_mono_error(1, 1000000, 8, 64);
    CHECK_MSG(wide <= 1e-5, "1 x 1000000 -> 8 x 64: rel. err " + std::to_string(wide));
    const double tall = worst_mono_error(400000, 3, 16, 5);
    CHECK_MSG(tall <= 1e-5, "400000 x 3 -> 16 x 5: rel. err " + std::to_string(tall));
    // tall and narrow: width first would need a 4194304 x 128 float buffer (2 GB); resized
    // height first instead, through a 16 x 1 one (tall frames of 2**28 x 1 needed 4 TB)
    const double narrow = worst_mono_error(1 << 22, 1, 16, 128);
    CHECK_MSG(narrow <= 1e-5, "4194304 x 1 -> 16 x 128: rel. err " + std::to_string(narrow));
    // the same height-first path with 3 interleaved channels (BGR): each output plane equals the
    // Mono8 result of its own channel
    const int h = 1 << 20, oh = 16, ow = 128;
    std::vector<std::uint8_t> bgr = random_bytes(static_cast<std::size_t>(h) * 3), mono(h);
    std::vector<float> got(3 * oh * ow), want(3 * oh * ow);
    preprocess(ImageView::packed(bgr.data(), 1, h, PixelFormat::BGR8), oh, ow, Normalization(), got.data(), 2);
    double worst = 0;
    for (int k = 0; k < 3; ++k) {
        for (int y = 0; y < h; ++y) mono[y] = bgr[static_cast<std::size_t>(y) * 3 + (2 - k)];  // plane k = R, G, B
        preprocess(ImageView::packed(mono.data(), 1, h, PixelFormat::Mono8), oh, ow, Normalization(), want.data(), 1);
        for (int i = 0; i < oh * ow; ++i)
            worst = std::max(worst, std::fabs(got[k * oh * ow + i] - want[k * oh * ow + i]) / 2.7);
    }
    CHECK_MSG(worst <= 1e-6, "BGR 1048576 x 1 height first vs Mono8: rel. err " + std::to_string(worst));
}

int main(int argc, char** argv) { return check::run_all(argc, argv); }
