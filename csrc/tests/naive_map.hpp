// Test-only (not part of libcdd_engine): the unfused anomaly map, written the obvious way in
// double precision: per-scale cosine distance, each scale upsampled to a full-size map,
// sum/product, blur rows then columns. A second implementation of the fused kernel's maths for
// the C++ tests (any shape, any settings) and the benchmark's baseline. It takes the operator
// rules (taps, reflect boundary, align_corners coordinates) from src/operators.hpp like the
// kernels do; the golden vectors (test_golden.cpp) check those rules against the Python reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../src/operators.hpp"
#include "cdd/error.hpp"
#include "cdd/kernels.hpp"

namespace cdd {
namespace testing {

using kernels::DType;
using kernels::FeaturePair;
using kernels::MapMode;
using kernels::MapSettings;

inline double load_feature(const FeaturePair& f, const void* base, std::size_t i) {
    return f.dtype == DType::Float32 ? static_cast<const float*>(base)[i]
                                     : detail::half_to_float(static_cast<const std::uint16_t*>(base)[i]);
}

/// One image: per-scale cosine distance, bilinear (align_corners) upsampling to full size,
/// sum/product, reflect-boundary blur, max. Writes out_h x out_w to `map` (not null), returns
/// the score; throws cdd::Error (InvalidArgument) on bad arguments or blur settings.
inline double anomaly_map_naive(const FeaturePair* levels, std::size_t num_scales, int out_h, int out_w,
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
                const double a = load_feature(f, f.teacher, c * hw + p), b = load_feature(f, f.student, c * hw + p);
                dot += a * b;
                nt += a * a;
                ns += b * b;
            }
            d[p] = 1.0 - dot / (std::max(std::sqrt(nt), settings.eps) * std::max(std::sqrt(ns), settings.eps));
        }
        std::vector<int> y0, x0;
        std::vector<double> fy, fx;
        detail::align_corners_coords(out_h, h, y0, fy);
        detail::align_corners_coords(out_w, w, x0, fx);
        for (int i = 0; i < out_h; ++i) {
            const int ya = y0[i], yb = std::min(ya + 1, h - 1);
            for (int j = 0; j < out_w; ++j) {
                const int xa = x0[j], xb = std::min(xa + 1, w - 1);
                up[static_cast<std::size_t>(i) * out_w + j] =
                    (1 - fy[i]) * ((1 - fx[j]) * d[ya * w + xa] + fx[j] * d[ya * w + xb]) +
                    fy[i] * ((1 - fx[j]) * d[yb * w + xa] + fx[j] * d[yb * w + xb]);
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
        const std::vector<double> taps = kernels::gaussian_taps(settings.sigma, settings.truncate);
        const int r = static_cast<int>(taps.size() / 2);
        std::vector<double> tmp(full);
        for (int i = 0; i < out_h; ++i)  // rows
            for (int j = 0; j < out_w; ++j) {
                double acc = 0;
                for (int t = -r; t <= r; ++t) acc += taps[t + r] * map[static_cast<std::size_t>(i) * out_w + detail::reflect_index(j + t, out_w)];
                tmp[static_cast<std::size_t>(i) * out_w + j] = acc;
            }
        for (int i = 0; i < out_h; ++i)  // columns
            for (int j = 0; j < out_w; ++j) {
                double acc = 0;
                for (int t = -r; t <= r; ++t)
                    acc += taps[t + r] * tmp[static_cast<std::size_t>(detail::reflect_index(i + t, out_h)) * out_w + j];
                map[static_cast<std::size_t>(i) * out_w + j] = acc;
            }
    }
    return *std::max_element(map, map + full);
}

}  // namespace testing
}  // namespace cdd
