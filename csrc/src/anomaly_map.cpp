// Fused anomaly map (docs/anomaly_map.md) on the CPU.
//
// Stage 1 (memory-bound, the only pass over the features): per-pixel cosine distance d_s,
// channel-outer / pixel-inner so every feature element is read once, contiguously, with
// double accumulators (1024-channel sums stay well inside the 1e-5 tolerance).
// Stage 2 (tiny): "add" mode uses linearity: blur(sum_s up(d_s)) = sum_s A_s d_s B_s^T with
// A_s = G_H U_s^H and B_s = G_W U_s^W precomputed. Both are banded (a 33-tap blur of a
// 2-tap interpolation), so each row stores the range of its non-zero columns and the
// products touch ~10 of 64 source rows per output row. "mul" is not linear: the product
// of the upsampled maps is formed row by row (never a per-scale full-size map), then
// blurred separably with scipy's reflect boundary.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include "cdd/error.hpp"
#include "cdd/kernels.hpp"
#include "cdd/limits.hpp"
#include "operators.hpp"
#include "parallel.hpp"
#include "simd.hpp"

namespace cdd {
namespace kernels {

using detail::blur_upsample_matrix;
using detail::half_to_float;
using detail::reflect_index;

namespace {

/// Mul mode's per-axis upsampling: align_corners source samples and float weights (the shared rule).
void align_corners_f(int n_out, int n_in, std::vector<int>& i0, std::vector<float>& frac) {
    std::vector<double> fd;
    detail::align_corners_coords(n_out, n_in, i0, fd);
    frac.assign(fd.begin(), fd.end());
}

}  // namespace

int blur_radius(double sigma, double truncate) {
    if (!(sigma > 0.0) || !std::isfinite(sigma))
        throw Error(ErrorCode::InvalidArgument, "blur sigma must be finite and > 0, got " + std::to_string(sigma));
    if (!(truncate >= 0.0) || !std::isfinite(truncate))
        throw Error(ErrorCode::InvalidArgument, "blur truncate must be finite and >= 0, got " + std::to_string(truncate));
    // in double, before any conversion to int: sigma * truncate may be far beyond INT_MAX
    const double r = std::floor(truncate * sigma + 0.5);
    if (!(r <= limits::kMaxBlurRadius))
        throw Error(ErrorCode::InvalidArgument,
                    "blur radius floor(truncate * sigma + 0.5) = " + std::to_string(r) + " (sigma " +
                        std::to_string(sigma) + ", truncate " + std::to_string(truncate) +
                        ") exceeds MAX_BLUR_RADIUS = " + std::to_string(limits::kMaxBlurRadius));
    return static_cast<int>(r);
}

std::vector<double> gaussian_taps(double sigma, double truncate) {
    const int radius = blur_radius(sigma, truncate);
    std::vector<double> w(2 * radius + 1);
    double total = 0.0;
    for (int k = -radius; k <= radius; ++k) {
        const double x = k / sigma;
        w[k + radius] = std::exp(-0.5 * x * x);
        total += w[k + radius];
    }
    for (double& v : w) v /= total;
    return w;
}

namespace {

/// Stores a dense double matrix as float plus each row's [lo, hi) range of non-zeros (of the
/// float values: a weight that rounds to 0 is outside the band).
void banded(const std::vector<double>& m, int rows, int cols, std::vector<float>& out, std::vector<int>& lo,
            std::vector<int>& hi) {
    out.assign(m.begin(), m.end());
    const std::vector<int> win = detail::band_windows(out.data(), rows, cols, 1);
    lo.resize(rows);
    hi.resize(rows);
    for (int i = 0; i < rows; ++i) {
        lo[i] = win[2 * i];
        hi[i] = win[2 * i + 1];
    }
}

CDD_HOT void axpy(float* CDD_RESTRICT y, const float* CDD_RESTRICT x, float a, int n) {
    for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

/// Max of a row, NaN when any entry is NaN or infinite: std::max alone skips NaNs, so a map
/// with NaNs could give a finite (or -inf) score and a "normal" verdict. x * 0 is 0 for every
/// finite x and NaN otherwise, so one extra add per entry flags them (no branch).
CDD_HOT float row_max(const float* x, int n) {
    float m = -std::numeric_limits<float>::infinity();
    float bad = 0.f;
    for (int i = 0; i < n; ++i) {
        m = std::max(m, x[i]);
        bad += x[i] * 0.f;
    }
    return bad == 0.f ? m : std::numeric_limits<float>::quiet_NaN();
}

/// Max over rows with NaN propagated (std::max_element skips NaNs the same way).
float max_of_rows(const std::vector<float>& rows) {
    float m = -std::numeric_limits<float>::infinity();
    for (float v : rows) {
        if (std::isnan(v)) return v;
        m = std::max(m, v);
    }
    return m;
}

/// Cosine accumulators over channels for pixels [p0, p1) of one scale.
template <class T>
CDD_HOT void cosine_block(const T* CDD_RESTRICT t, const T* CDD_RESTRICT s, int channels, std::size_t hw,
                          std::size_t p0, std::size_t p1, double* CDD_RESTRICT dot, double* CDD_RESTRICT nt,
                          double* CDD_RESTRICT ns) {
    const std::size_t n = p1 - p0;
    for (std::size_t i = 0; i < n; ++i) dot[i] = nt[i] = ns[i] = 0.0;
    for (int c = 0; c < channels; ++c) {
        const T* tc = t + c * hw + p0;
        const T* sc = s + c * hw + p0;
        for (std::size_t i = 0; i < n; ++i) {
            double a, b;
            if constexpr (std::is_same<T, std::uint16_t>::value) {
                a = half_to_float(tc[i]);
                b = half_to_float(sc[i]);
            } else {
                a = tc[i];
                b = sc[i];
            }
            dot[i] += a * b;
            nt[i] += a * a;
            ns[i] += b * b;
        }
    }
}

constexpr std::size_t kPixelBlock = 512;  // 3 x 512 double accumulators = 12 KB: stays in L1 (32 KB on Zen 3)

}  // namespace

AnomalyMap::AnomalyMap(int out_height, int out_width, std::vector<std::pair<int, int>> scales,
                       const MapSettings& settings)
    : out_h_(out_height), out_w_(out_width), settings_(settings) {
    if (out_h_ <= 0 || out_w_ <= 0)
        throw Error(ErrorCode::InvalidArgument, "anomaly map size must be positive, got " + std::to_string(out_h_) +
                                                    "x" + std::to_string(out_w_));
    if (static_cast<std::uint64_t>(out_h_) * static_cast<std::uint64_t>(out_w_) > limits::kMaxMapPixels)
        throw Error(ErrorCode::InvalidArgument, "anomaly map size " + std::to_string(out_h_) + "x" +
                                                    std::to_string(out_w_) + " exceeds MAX_MAP_PIXELS = " +
                                                    std::to_string(limits::kMaxMapPixels));
    if (scales.empty()) throw Error(ErrorCode::InvalidArgument, "anomaly map needs at least one feature scale");
    if (!(settings.sigma >= 0.0) || !(settings.truncate >= 0.0) || !(settings.eps >= 0.0) ||
        !std::isfinite(settings.sigma) || !std::isfinite(settings.truncate) || !std::isfinite(settings.eps))
        throw Error(ErrorCode::InvalidArgument, "anomaly map: sigma, truncate and eps must be finite and >= 0");
    // checked before any of the (out x in) matrices below is allocated
    for (const auto& hw : scales) {
        const std::uint64_t rows = static_cast<std::uint64_t>(std::max(hw.first, 0)),
                            cols = static_cast<std::uint64_t>(std::max(hw.second, 0));
        if (rows * cols > limits::kMaxMapPixels || rows * static_cast<std::uint64_t>(out_h_) > limits::kMaxMapPixels ||
            cols * static_cast<std::uint64_t>(out_w_) > limits::kMaxMapPixels)
            throw Error(ErrorCode::InvalidArgument,
                        "feature scale " + std::to_string(hw.first) + "x" + std::to_string(hw.second) + " with map " +
                            std::to_string(out_h_) + "x" + std::to_string(out_w_) +
                            ": a feature plane or an upsampling matrix exceeds MAX_MAP_PIXELS = " +
                            std::to_string(limits::kMaxMapPixels));
    }
    if (settings.mode != MapMode::Add && settings.mode != MapMode::Mul)
        throw Error(ErrorCode::InvalidArgument, "anomaly map: mode must be add or mul");
    std::vector<double> taps;
    if (settings.sigma > 0.0) taps = gaussian_taps(settings.sigma, settings.truncate);
    taps_.assign(taps.begin(), taps.end());
    std::size_t off = 0;
    for (const auto& hw : scales) {
        if (hw.first <= 0 || hw.second <= 0)
            throw Error(ErrorCode::InvalidArgument, "feature scale sizes must be positive, got " +
                                                        std::to_string(hw.first) + "x" + std::to_string(hw.second));
        Scale sc;
        sc.h = hw.first;
        sc.w = hw.second;
        if (settings.mode == MapMode::Add) {
            banded(blur_upsample_matrix(out_h_, sc.h, taps), out_h_, sc.h, sc.A, sc.a_lo, sc.a_hi);
            const std::vector<double> B = blur_upsample_matrix(out_w_, sc.w, taps);  // (out_w x w)
            std::vector<double> Bt(B.size());
            for (int x = 0; x < out_w_; ++x)
                for (int j = 0; j < sc.w; ++j)
                    Bt[static_cast<std::size_t>(j) * out_w_ + x] = B[static_cast<std::size_t>(x) * sc.w + j];
            banded(Bt, sc.w, out_w_, sc.Bt, sc.b_lo, sc.b_hi);
        } else {
            align_corners_f(out_h_, sc.h, sc.up_i0, sc.up_fy);
            align_corners_f(out_w_, sc.w, sc.up_j0, sc.up_fx);
        }
        dist_offset_.push_back(off);
        off += static_cast<std::size_t>(sc.h) * sc.w;
        scales_.push_back(std::move(sc));
    }
    dist_floats_ = off;
}

void AnomalyMap::check_levels(const FeaturePair* levels) const {
    if (levels == nullptr) throw Error(ErrorCode::InvalidArgument, "anomaly map: feature list is null");
    for (std::size_t s = 0; s < scales_.size(); ++s) {
        const FeaturePair& f = levels[s];
        if (f.teacher == nullptr || f.student == nullptr)
            throw Error(ErrorCode::InvalidArgument, "anomaly map: scale " + std::to_string(s) + " has a null pointer");
        if (f.height != scales_[s].h || f.width != scales_[s].w || f.channels <= 0)
            throw Error(ErrorCode::InvalidArgument,
                        "anomaly map: scale " + std::to_string(s) + " expected (C, " + std::to_string(scales_[s].h) +
                            ", " + std::to_string(scales_[s].w) + ") features with C > 0, got (" +
                            std::to_string(f.channels) + ", " + std::to_string(f.height) + ", " +
                            std::to_string(f.width) + ")");
        if (f.dtype != DType::Float32 && f.dtype != DType::Float16)
            throw Error(ErrorCode::InvalidArgument, "anomaly map: unknown feature dtype");
    }
}

void AnomalyMap::distances(const FeaturePair* levels, std::size_t image, float* dist, int num_threads) const {
    // work items: (scale, pixel block) so that one image can use several threads
    struct Item {
        std::size_t s, p0, p1;
    };
    std::vector<Item> items;
    for (std::size_t s = 0; s < scales_.size(); ++s) {
        const std::size_t hw = static_cast<std::size_t>(scales_[s].h) * scales_[s].w;
        for (std::size_t p = 0; p < hw; p += kPixelBlock) items.push_back({s, p, std::min(hw, p + kPixelBlock)});
    }
    const double eps = settings_.eps;
    detail::parallel_for(items.size(), num_threads, [&](std::size_t b, std::size_t e) {
        double acc[3 * kPixelBlock];
        for (std::size_t k = b; k < e; ++k) {
            const Item& it = items[k];
            const FeaturePair& f = levels[it.s];
            const std::size_t hw = static_cast<std::size_t>(f.height) * f.width;
            const std::size_t per_image = hw * static_cast<std::size_t>(f.channels);
            double *dot = acc, *nt = acc + kPixelBlock, *ns = acc + 2 * kPixelBlock;
            if (f.dtype == DType::Float32) {
                const float* t = static_cast<const float*>(f.teacher) + image * per_image;
                const float* s = static_cast<const float*>(f.student) + image * per_image;
                cosine_block<float>(t, s, f.channels, hw, it.p0, it.p1, dot, nt, ns);
            } else {
                const std::uint16_t* t = static_cast<const std::uint16_t*>(f.teacher) + image * per_image;
                const std::uint16_t* s = static_cast<const std::uint16_t*>(f.student) + image * per_image;
                cosine_block<std::uint16_t>(t, s, f.channels, hw, it.p0, it.p1, dot, nt, ns);
            }
            float* d = dist + dist_offset_[it.s] + it.p0;
            for (std::size_t i = 0; i < it.p1 - it.p0; ++i) {
                const double den = std::max(std::sqrt(nt[i]), eps) * std::max(std::sqrt(ns[i]), eps);
                d[i] = static_cast<float>(1.0 - dot[i] / den);
            }
        }
    });
}

std::size_t AnomalyMap::scratch_floats() const {
    std::size_t rows = 0;
    for (const Scale& s : scales_) rows += static_cast<std::size_t>(s.h);
    const std::size_t full = static_cast<std::size_t>(out_h_) * out_w_;
    // add: T_s (h_s x W) for all scales + one map; mul: R_s rows + product + row-blurred + padded rows
    return rows * out_w_ + 2 * full + out_w_ + taps_.size() + 16;
}

float AnomalyMap::map_add(const float* dist, float* map, float* scratch, int num_threads) const {
    const int W = out_w_;
    // T_s = d_s B_s^T, (h_s x W) per scale, rows stacked
    std::vector<std::size_t> t_off(scales_.size());
    std::vector<std::pair<std::size_t, int>> rows;  // (scale, row)
    std::size_t off = 0;
    for (std::size_t s = 0; s < scales_.size(); ++s) {
        t_off[s] = off;
        off += static_cast<std::size_t>(scales_[s].h) * W;
        for (int k = 0; k < scales_[s].h; ++k) rows.emplace_back(s, k);
    }
    float* T = scratch;
    detail::parallel_for(rows.size(), num_threads, [&](std::size_t b, std::size_t e) {
        for (std::size_t r = b; r < e; ++r) {
            const Scale& sc = scales_[rows[r].first];
            const int k = rows[r].second;
            float* trow = T + t_off[rows[r].first] + static_cast<std::size_t>(k) * W;
            std::fill(trow, trow + W, 0.f);
            const float* drow = dist + dist_offset_[rows[r].first] + static_cast<std::size_t>(k) * sc.w;
            for (int j = 0; j < sc.w; ++j) {
                const int lo = sc.b_lo[j], hi = sc.b_hi[j];
                axpy(trow + lo, sc.Bt.data() + static_cast<std::size_t>(j) * W + lo, drow[j], hi - lo);
            }
        }
    });
    // M = sum_s A_s T_s, one output row at a time
    std::vector<float> row_max_v(out_h_);
    detail::parallel_for(static_cast<std::size_t>(out_h_), num_threads, [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i) {
            float* mrow = map + i * W;
            std::fill(mrow, mrow + W, 0.f);
            for (std::size_t s = 0; s < scales_.size(); ++s) {
                const Scale& sc = scales_[s];
                const float* arow = sc.A.data() + i * sc.h;
                for (int k = sc.a_lo[i]; k < sc.a_hi[i]; ++k)
                    axpy(mrow, T + t_off[s] + static_cast<std::size_t>(k) * W, arow[k], W);
            }
            row_max_v[i] = row_max(mrow, W);
        }
    });
    return max_of_rows(row_max_v);
}

namespace {

/// One row of the mul-mode product: prod_s lerp_y(R_s[i0], R_s[i1]).
CDD_HOT void lerp_mul(float* CDD_RESTRICT out, const float* CDD_RESTRICT a, const float* CDD_RESTRICT b, float fy,
                      int n, bool first) {
    if (first)
        for (int x = 0; x < n; ++x) out[x] = a[x] + fy * (b[x] - a[x]);
    else
        for (int x = 0; x < n; ++x) out[x] *= a[x] + fy * (b[x] - a[x]);
}

/// out[x] = sum_t w[t] * padded[x + t] (padded has n + 2r entries).
CDD_HOT void conv_row(float* CDD_RESTRICT out, const float* CDD_RESTRICT padded, const float* w, int taps, int n) {
    for (int x = 0; x < n; ++x) out[x] = 0.f;
    for (int t = 0; t < taps; ++t) {
        const float wt = w[t];
        const float* p = padded + t;
        for (int x = 0; x < n; ++x) out[x] += wt * p[x];
    }
}

}  // namespace

float AnomalyMap::map_mul(const float* dist, float* map, float* scratch, int num_threads) const {
    const int W = out_w_, H = out_h_;
    const std::size_t full = static_cast<std::size_t>(H) * W;
    // R_s: horizontal align-corners upsampling of every row of d_s, (h_s x W)
    std::vector<std::size_t> r_off(scales_.size());
    std::size_t off = 0;
    for (std::size_t s = 0; s < scales_.size(); ++s) {
        r_off[s] = off;
        off += static_cast<std::size_t>(scales_[s].h) * W;
    }
    float* R = scratch;
    float* P = scratch + off;          // product map (H x W)
    float* Q = P + full;               // row-blurred product (H x W)
    const bool blur = !taps_.empty();
    float* target = blur ? P : map;
    for (std::size_t s = 0; s < scales_.size(); ++s) {
        const Scale& sc = scales_[s];
        detail::parallel_for(static_cast<std::size_t>(sc.h), num_threads, [&](std::size_t b, std::size_t e) {
            for (std::size_t k = b; k < e; ++k) {
                const float* d = dist + dist_offset_[s] + k * sc.w;
                float* r = R + r_off[s] + k * W;
                for (int x = 0; x < W; ++x) {
                    const int j = sc.up_j0[x];
                    const float f = sc.up_fx[x];
                    r[x] = f != 0.f ? d[j] + f * (d[j + 1] - d[j]) : d[j];
                }
            }
        });
    }
    detail::parallel_for(static_cast<std::size_t>(H), num_threads, [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i)
            for (std::size_t s = 0; s < scales_.size(); ++s) {
                const Scale& sc = scales_[s];
                const int k = sc.up_i0[i];
                const int k1 = sc.up_fy[i] != 0.f ? k + 1 : k;
                lerp_mul(target + i * W, R + r_off[s] + static_cast<std::size_t>(k) * W,
                         R + r_off[s] + static_cast<std::size_t>(k1) * W, sc.up_fy[i], W, s == 0);
            }
    });
    std::vector<float> row_max_v(H);
    if (!blur) {
        for (int i = 0; i < H; ++i) row_max_v[i] = row_max(map + static_cast<std::size_t>(i) * W, W);
        return max_of_rows(row_max_v);
    }
    const int taps = static_cast<int>(taps_.size()), r = taps / 2;
    // rows: reflect-pad then convolve
    detail::parallel_for(static_cast<std::size_t>(H), num_threads, [&](std::size_t b, std::size_t e) {
        std::vector<float> padded(static_cast<std::size_t>(W) + 2 * r);
        for (std::size_t i = b; i < e; ++i) {
            const float* p = P + i * W;
            for (int x = -r; x < W + r; ++x) padded[x + r] = p[reflect_index(x, W)];
            conv_row(Q + i * W, padded.data(), taps_.data(), taps, W);
        }
    });
    // columns: each output row is a weighted sum of reflected rows of Q
    detail::parallel_for(static_cast<std::size_t>(H), num_threads, [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i) {
            float* m = map + i * W;
            std::fill(m, m + W, 0.f);
            for (int t = -r; t <= r; ++t)
                axpy(m, Q + static_cast<std::size_t>(reflect_index(static_cast<long long>(i) + t, H)) * W,
                     taps_[t + r], W);
            row_max_v[i] = row_max(m, W);
        }
    });
    return max_of_rows(row_max_v);
}

float AnomalyMap::operator()(const FeaturePair* levels, float* map, int num_threads) const {
    float score = 0.f;
    run_batch(levels, 1, map, &score, num_threads);
    return score;
}

template <class Fill>
void AnomalyMap::for_each_image(std::size_t batch, float* maps, float* scores, int num_threads, Fill&& fill) const {
    if (batch == 0) return;
    const std::size_t full = static_cast<std::size_t>(out_h_) * out_w_;
    const int threads = std::max(1, num_threads);
    // threads over images when there are enough of them, else inside each image
    const int outer = static_cast<int>(std::min<std::size_t>(batch, threads));
    const int inner = std::max(1, threads / outer);
    detail::parallel_for(batch, outer, [&](std::size_t b, std::size_t e) {
        std::vector<float> dist(dist_floats_);
        std::vector<float> scratch(scratch_floats());
        std::vector<float> own_map(maps ? 0 : full);
        for (std::size_t i = b; i < e; ++i) {
            fill(i, dist.data(), inner);
            float* m = maps ? maps + i * full : own_map.data();
            scores[i] = settings_.mode == MapMode::Add ? map_add(dist.data(), m, scratch.data(), inner)
                                                       : map_mul(dist.data(), m, scratch.data(), inner);
        }
    });
}

void AnomalyMap::run_batch(const FeaturePair* levels, std::size_t batch, float* maps, float* scores,
                           int num_threads) const {
    check_levels(levels);
    if (scores == nullptr) throw Error(ErrorCode::InvalidArgument, "anomaly map: scores pointer is null");
    for_each_image(batch, maps, scores, num_threads,
                   [&](std::size_t i, float* dist, int inner) { distances(levels, i, dist, inner); });
}

void AnomalyMap::run_batch_from_distances(const float* const* distances, std::size_t batch, float* maps,
                                          float* scores, int num_threads) const {
    if (distances == nullptr || scores == nullptr)
        throw Error(ErrorCode::InvalidArgument, "anomaly map: null distances or scores pointer");
    for (std::size_t s = 0; s < scales_.size(); ++s)
        if (distances[s] == nullptr)
            throw Error(ErrorCode::InvalidArgument, "anomaly map: scale " + std::to_string(s) + " has a null pointer");
    for_each_image(batch, maps, scores, num_threads, [&](std::size_t i, float* dist, int) {
        for (std::size_t s = 0; s < scales_.size(); ++s) {  // gather image i's maps (a few KB)
            const std::size_t hw = static_cast<std::size_t>(scales_[s].h) * scales_[s].w;
            std::memcpy(dist + dist_offset_[s], distances[s] + i * hw, hw * sizeof(float));
        }
    });
}

}  // namespace kernels
}  // namespace cdd

namespace cdd {
namespace detail {

std::vector<double> blur_upsample_matrix(int n_out, int n_in, const std::vector<double>& taps) {
    std::vector<int> i0;
    std::vector<double> fd;
    align_corners_coords(n_out, n_in, i0, fd);
    std::vector<double> U(static_cast<std::size_t>(n_out) * n_in, 0.0);
    for (int i = 0; i < n_out; ++i) {
        U[static_cast<std::size_t>(i) * n_in + i0[i]] += 1.0 - fd[i];
        if (fd[i] != 0.0) U[static_cast<std::size_t>(i) * n_in + i0[i] + 1] += fd[i];
    }
    if (taps.empty()) return U;
    const int r = static_cast<int>(taps.size() / 2);
    std::vector<double> GU(U.size(), 0.0);
    for (int i = 0; i < n_out; ++i)
        for (int t = -r; t <= r; ++t) {
            const int src = reflect_index(static_cast<long long>(i) + t, n_out);
            const double w = taps[t + r];
            for (int k = 0; k < n_in; ++k)
                GU[static_cast<std::size_t>(i) * n_in + k] += w * U[static_cast<std::size_t>(src) * n_in + k];
        }
    return GU;
}

std::vector<double> blur_matrix(int n, const std::vector<double>& taps) {
    std::vector<double> g(static_cast<std::size_t>(n) * n, 0.0);
    const int r = static_cast<int>(taps.size() / 2);
    for (int i = 0; i < n; ++i)
        for (int t = -r; t <= r; ++t)
            g[static_cast<std::size_t>(i) * n + reflect_index(static_cast<long long>(i) + t, n)] += taps[t + r];
    return g;
}

}  // namespace detail
}  // namespace cdd
