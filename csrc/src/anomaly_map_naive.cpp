// The unfused anomaly map, written the obvious way in double precision: per-scale cosine
// distance, each scale upsampled to a full-size map, sum/product, blur rows then columns.
// An independent check of the fused kernel in the C++ tests and its baseline in the benchmark.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cdd/error.hpp"
#include "cdd/kernels.hpp"

namespace cdd {
namespace kernels {

namespace {
double load(const FeaturePair& f, const void* base, std::size_t i) {
    return f.dtype == DType::Float32 ? static_cast<const float*>(base)[i]
                                     : half_to_float(static_cast<const std::uint16_t*>(base)[i]);
}
}  // namespace

double anomaly_map_naive(const FeaturePair* levels, std::size_t num_scales, int out_h, int out_w,
                         const MapSettings& settings, double* map) {
    if (levels == nullptr || map == nullptr || num_scales == 0 || out_h <= 0 || out_w <= 0)
        throw Error(ErrorCode::InvalidArgument, "anomaly_map_naive: bad arguments");
    const std::size_t full = static_cast<std::size_t>(out_h) * out_w;
    std::vector<double> up(full);
    for (std::size_t s = 0; s < num_scales; ++s) {
        const FeaturePair& f = levels[s];
        const int h = f.height, w = f.width;
        const std::size_t hw = static_cast<std::size_t>(h) * w;
        std::vector<double> d(hw);
        for (std::size_t p = 0; p < hw; ++p) {
            double dot = 0, nt = 0, ns = 0;
            for (int c = 0; c < f.channels; ++c) {
                const double a = load(f, f.teacher, c * hw + p), b = load(f, f.student, c * hw + p);
                dot += a * b;
                nt += a * a;
                ns += b * b;
            }
            d[p] = 1.0 - dot / (std::max(std::sqrt(nt), settings.eps) * std::max(std::sqrt(ns), settings.eps));
        }
        const double sy = out_h > 1 ? static_cast<double>(h - 1) / (out_h - 1) : 0.0;
        const double sx = out_w > 1 ? static_cast<double>(w - 1) / (out_w - 1) : 0.0;
        for (int i = 0; i < out_h; ++i) {
            const double y = sy * i;
            const int y0 = std::min(static_cast<int>(y), h - 1), y1 = std::min(y0 + 1, h - 1);
            const double fy = y - y0;
            for (int j = 0; j < out_w; ++j) {
                const double x = sx * j;
                const int x0 = std::min(static_cast<int>(x), w - 1), x1 = std::min(x0 + 1, w - 1);
                const double fx = x - x0;
                up[static_cast<std::size_t>(i) * out_w + j] =
                    (1 - fy) * ((1 - fx) * d[y0 * w + x0] + fx * d[y0 * w + x1]) +
                    fy * ((1 - fx) * d[y1 * w + x0] + fx * d[y1 * w + x1]);
            }
        }
        for (std::size_t p = 0; p < full; ++p) {
            if (s == 0)
                map[p] = up[p];
            else if (settings.mode == MapMode::Add)
                map[p] += up[p];
            else
                map[p] *= up[p];
        }
    }
    if (settings.sigma > 0) {
        const std::vector<double> taps = gaussian_taps(settings.sigma, settings.truncate);
        const int r = static_cast<int>(taps.size() / 2);
        std::vector<double> tmp(full);
        for (int i = 0; i < out_h; ++i)  // rows
            for (int j = 0; j < out_w; ++j) {
                double acc = 0;
                for (int t = -r; t <= r; ++t) acc += taps[t + r] * map[static_cast<std::size_t>(i) * out_w + reflect_index(j + t, out_w)];
                tmp[static_cast<std::size_t>(i) * out_w + j] = acc;
            }
        for (int i = 0; i < out_h; ++i)  // columns
            for (int j = 0; j < out_w; ++j) {
                double acc = 0;
                for (int t = -r; t <= r; ++t)
                    acc += taps[t + r] * tmp[static_cast<std::size_t>(reflect_index(i + t, out_h)) * out_w + j];
                map[static_cast<std::size_t>(i) * out_w + j] = acc;
            }
    }
    return *std::max_element(map, map + full);
}

}  // namespace kernels
}  // namespace cdd
