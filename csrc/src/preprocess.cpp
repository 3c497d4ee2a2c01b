// uint8 frame -> antialiased bilinear resize -> normalise, as cdd_engine/preprocess.py.
//
// The resize is PyTorch's interpolate(mode="bilinear", align_corners=False, antialias=True):
// separable, each output sample a normalised triangle-filter average whose support widens
// with the down-scale factor. Width first into a planar float buffer (one plane per input
// channel), then height, with the normalisation fused into the height pass. Both inner
// loops run over contiguous memory so they vectorise.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cdd/error.hpp"
#include "cdd/kernels.hpp"
#include "cdd/limits.hpp"
#include "operators.hpp"
#include "parallel.hpp"
#include "simd.hpp"

namespace cdd {
namespace kernels {
namespace {

using detail::AxisWeights;
using detail::antialias_weights;


/// Width pass of one input row: `src` has `C` interleaved channels; writes plane c of the
/// planar row buffer at dst + c * plane_stride.
template <class T, int C>
CDD_HOT void resample_row(const T* CDD_RESTRICT src, const AxisWeights& ax, int out_w, float* CDD_RESTRICT dst,
                          std::size_t plane_stride) {
    const int taps = ax.max_taps;
    for (int x = 0; x < out_w; ++x) {
        const T* p = src + static_cast<std::size_t>(ax.start[x]) * C;
        const float* w = ax.w.data() + static_cast<std::size_t>(x) * taps;
        const int n = ax.size[x];
        // double accumulators: a strong down-scale sums millions of taps per output (a 1 x 10^8
        // frame: 3 x 10^6), where float sums drift by 1e-4 relative; this loop is scalar either
        // way (a reduction), so double costs nothing here
        double acc[C];
        for (int c = 0; c < C; ++c) acc[c] = 0.0;
        for (int j = 0; j < n; ++j)
            for (int c = 0; c < C; ++c) acc[c] += static_cast<double>(w[j]) * static_cast<double>(p[j * C + c]);
        for (int c = 0; c < C; ++c) dst[c * plane_stride + x] = static_cast<float>(acc[c]);
    }
}

/// Windows longer than this sum in double in the height pass (float sums drift with the
/// window length; up to 32 taps, a down-scale of <= 16x, they stay ~1e-7 relative).
constexpr int kFloatSumTaps = 32;

/// Height pass, long windows: the same sum with double accumulators (acc: out_w doubles).
CDD_HOT void resample_column_exact(const float* CDD_RESTRICT plane, std::size_t row_stride, const float* w,
                                   int start, int n, int out_w, float a, float b, double* CDD_RESTRICT acc,
                                   float* CDD_RESTRICT out) {
    for (int x = 0; x < out_w; ++x) acc[x] = 0.0;
    for (int j = 0; j < n; ++j) {
        const double wj = w[j];
        const float* r = plane + static_cast<std::size_t>(start + j) * row_stride;
        for (int x = 0; x < out_w; ++x) acc[x] += wj * r[x];
    }
    for (int x = 0; x < out_w; ++x) out[x] = static_cast<float>(acc[x]) * a + b;
}

/// Height pass of one output row of one plane: out[x] = (sum_j w_j rows[j][x]) * a + b.
CDD_HOT void resample_column(const float* CDD_RESTRICT plane, std::size_t row_stride, const float* w, int start,
                             int n, int out_w, float a, float b, float* CDD_RESTRICT out) {
    for (int x = 0; x < out_w; ++x) out[x] = 0.f;
    for (int j = 0; j < n; ++j) {
        const float wj = w[j];
        const float* r = plane + static_cast<std::size_t>(start + j) * row_stride;
        for (int x = 0; x < out_w; ++x) out[x] += wj * r[x];
    }
    for (int x = 0; x < out_w; ++x) out[x] = out[x] * a + b;
}

/// The width-first buffer (in_h x out_w x C floats) is used up to this size (256 MB); beyond,
/// when it is the smaller one, the height-first buffer (out_h x in_w x C) is: a tall narrow
/// frame (2**28 x 1 -> 4096 wide) would need 4 TB width first. Since (in_h * out_w)(out_h *
/// in_w) <= MAX_FRAME_PIXELS * MAX_MAP_PIXELS = 2**52, the smaller order needs <= 2**26 x C.
constexpr std::uint64_t kMaxResizeBufferFloats = std::uint64_t(1) << 26;

/// Height-first order: the height pass from the interleaved source into planar rows
/// (out_h x in_w per channel, double sums), then the width pass of each row with a * x + b.
template <class T, int C>
void resize_height_first(const T* src, int in_w, std::size_t stride_elems, int out_h, int out_w,
                         const AxisWeights& wx, const AxisWeights& wy, const int* src_channel, const float* a,
                         const float* b, int out_planes, float* out, int num_threads) {
    const std::size_t plane = static_cast<std::size_t>(out_h) * in_w;
    std::vector<float> tmp(plane * C);
    detail::parallel_for(static_cast<std::size_t>(out_h), num_threads, [&](std::size_t r0, std::size_t r1) {
        std::vector<double> acc(static_cast<std::size_t>(in_w) * C);
        for (std::size_t r = r0; r < r1; ++r) {
            std::fill(acc.begin(), acc.end(), 0.0);
            const float* w = wy.w.data() + r * wy.max_taps;
            for (int j = 0; j < wy.size[r]; ++j) {
                const double wj = w[j];
                const T* row = src + static_cast<std::size_t>(wy.start[r] + j) * stride_elems;
                for (std::size_t i = 0; i < acc.size(); ++i) acc[i] += wj * static_cast<double>(row[i]);
            }
            for (int x = 0; x < in_w; ++x)
                for (int c = 0; c < C; ++c)
                    tmp[c * plane + r * in_w + x] = static_cast<float>(acc[static_cast<std::size_t>(x) * C + c]);
        }
    });
    const std::size_t out_plane = static_cast<std::size_t>(out_h) * out_w;
    detail::parallel_for(static_cast<std::size_t>(out_h), num_threads, [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r)
            for (int k = 0; k < out_planes; ++k) {
                float* dst = out + k * out_plane + r * out_w;
                resample_row<float, 1>(tmp.data() + src_channel[k] * plane + r * in_w, wx, out_w, dst, 0);
                for (int x = 0; x < out_w; ++x) dst[x] = dst[x] * a[k] + b[k];
            }
    });
}

/// Shared body: C source channels of type T -> `out_planes` output planes; output plane k
/// reads source channel src_channel[k] and is scaled by a[k], shifted by b[k].
template <class T, int C>
void resize_generic(const T* src, int in_h, int in_w, std::size_t stride_elems, int out_h, int out_w,
                    const int* src_channel, const float* a, const float* b, int out_planes, float* out,
                    int num_threads) {
    const AxisWeights wx = antialias_weights(in_w, out_w);
    const AxisWeights wy = antialias_weights(in_h, out_h);
    if (static_cast<std::uint64_t>(in_h) * static_cast<std::uint64_t>(out_w) * C > kMaxResizeBufferFloats &&
        static_cast<std::uint64_t>(out_h) * in_w < static_cast<std::uint64_t>(in_h) * out_w)
        return resize_height_first<T, C>(src, in_w, stride_elems, out_h, out_w, wx, wy, src_channel, a, b,
                                         out_planes, out, num_threads);
    const std::size_t plane = static_cast<std::size_t>(in_h) * out_w;  // one width-resampled plane
    std::vector<float> tmp(plane * C);
    detail::parallel_for(static_cast<std::size_t>(in_h), num_threads, [&](std::size_t y0, std::size_t y1) {
        for (std::size_t y = y0; y < y1; ++y)
            resample_row<T, C>(src + y * stride_elems, wx, out_w, tmp.data() + y * out_w, plane);
    });
    const std::size_t out_plane = static_cast<std::size_t>(out_h) * out_w;
    detail::parallel_for(static_cast<std::size_t>(out_h), num_threads, [&](std::size_t r0, std::size_t r1) {
        std::vector<double> acc(wy.max_taps > kFloatSumTaps ? out_w : 0);
        for (std::size_t r = r0; r < r1; ++r)
            for (int k = 0; k < out_planes; ++k) {
                const float* src_plane = tmp.data() + src_channel[k] * plane;
                const float* w = wy.w.data() + r * wy.max_taps;
                float* dst = out + k * out_plane + r * out_w;
                if (wy.size[r] > kFloatSumTaps)
                    resample_column_exact(src_plane, out_w, w, wy.start[r], wy.size[r], out_w, a[k], b[k], acc.data(),
                                          dst);
                else
                    resample_column(src_plane, out_w, w, wy.start[r], wy.size[r], out_w, a[k], b[k], dst);
            }
    });
}

/// A frame already at the model size: the antialiased weights are one tap of 1.0 per sample,
/// so the resize is the identity and only the de-interleave and a * x + b remain. Written as
/// the two passes write it (the same float conversion, then dst * a + b in a CDD_HOT loop), so
/// the planes are bit-identical to the general path's. A 256x256 RGB frame through the Python
/// binding: 0.04 ms, against 0.86 ms through the two passes (benchmarks/RESULTS.md).
template <int C>
CDD_HOT void normalize_row(const std::uint8_t* CDD_RESTRICT src, int w, int c, float a, float b,
                           float* CDD_RESTRICT dst) {
    for (int x = 0; x < w; ++x) dst[x] = static_cast<float>(src[static_cast<std::size_t>(x) * C + c]);
    for (int x = 0; x < w; ++x) dst[x] = dst[x] * a + b;
}

template <int C>
void normalize_same_size(const std::uint8_t* src, int h, int w, std::size_t stride, const int* src_channel,
                         const float* a, const float* b, float* out, int num_threads) {
    const std::size_t plane = static_cast<std::size_t>(h) * w;
    detail::parallel_for(static_cast<std::size_t>(h), num_threads, [&](std::size_t y0, std::size_t y1) {
        for (std::size_t y = y0; y < y1; ++y)
            for (int k = 0; k < 3; ++k)
                normalize_row<C>(src + y * stride, w, src_channel[k], a[k], b[k], out + k * plane + y * w);
    });
}

}  // namespace

void preprocess(const ImageView& view, int out_h, int out_w, const Normalization& norm, float* out,
                int num_threads) {
    validate(view, 0);
    if (out_h <= 0 || out_w <= 0 ||
        static_cast<std::uint64_t>(out_h) * static_cast<std::uint64_t>(out_w) > limits::kMaxMapPixels)
        throw Error(ErrorCode::InvalidArgument, "preprocess: output size must be positive with height * width <= "
                                                "MAX_MAP_PIXELS = " + std::to_string(limits::kMaxMapPixels) +
                                                    ", got " + std::to_string(out_h) + "x" + std::to_string(out_w));
    if (out == nullptr) throw Error(ErrorCode::InvalidArgument, "preprocess: output pointer is null");
    float a[3], b[3];
    for (int c = 0; c < 3; ++c) {
        if (!(norm.std[c] != 0.f))
            throw Error(ErrorCode::InvalidArgument, "preprocess: std[" + std::to_string(c) + "] must be non-zero");
        // (x / 255 - mean) / std = x * a + b
        a[c] = static_cast<float>(1.0 / (255.0 * norm.std[c]));
        b[c] = static_cast<float>(-static_cast<double>(norm.mean[c]) / norm.std[c]);
    }
    const bool same_size = view.height == out_h && view.width == out_w;
    if (view.format == PixelFormat::Mono8) {
        const int src_channel[3] = {0, 0, 0};
        if (same_size)
            normalize_same_size<1>(view.data, out_h, out_w, view.stride_bytes, src_channel, a, b, out, num_threads);
        else
            resize_generic<std::uint8_t, 1>(view.data, view.height, view.width, view.stride_bytes, out_h, out_w,
                                             src_channel, a, b, 3, out, num_threads);
    } else {
        const bool bgr = view.format == PixelFormat::BGR8;
        const int src_channel[3] = {bgr ? 2 : 0, 1, bgr ? 0 : 2};
        if (same_size)
            normalize_same_size<3>(view.data, out_h, out_w, view.stride_bytes, src_channel, a, b, out, num_threads);
        else
            resize_generic<std::uint8_t, 3>(view.data, view.height, view.width, view.stride_bytes, out_h, out_w,
                                             src_channel, a, b, 3, out, num_threads);
    }
}

void resize_plane(const float* src, int in_h, int in_w, std::size_t src_stride, float* dst, int out_h, int out_w,
                  int num_threads) {
    if (src == nullptr || dst == nullptr) throw Error(ErrorCode::InvalidArgument, "resize_plane: null pointer");
    if (in_h <= 0 || in_w <= 0 || out_h <= 0 || out_w <= 0 || src_stride < static_cast<std::size_t>(in_w) ||
        static_cast<std::uint64_t>(in_h) * static_cast<std::uint64_t>(in_w) > limits::kMaxFramePixels ||
        static_cast<std::uint64_t>(out_h) * static_cast<std::uint64_t>(out_w) > limits::kMaxFramePixels)
        throw Error(ErrorCode::InvalidArgument, "resize_plane: bad sizes " + std::to_string(in_h) + "x" +
                                                    std::to_string(in_w) + " -> " + std::to_string(out_h) + "x" +
                                                    std::to_string(out_w) + " (sides > 0, at most MAX_FRAME_PIXELS = " +
                                                    std::to_string(limits::kMaxFramePixels) + " pixels)");
    if (in_h == out_h && in_w == out_w) {  // identity weights: a plain copy
        for (int y = 0; y < in_h; ++y)
            std::memcpy(dst + static_cast<std::size_t>(y) * out_w, src + y * src_stride, sizeof(float) * in_w);
        return;
    }
    const int src_channel[1] = {0};
    const float a[1] = {1.f}, b[1] = {0.f};
    resize_generic<float, 1>(src, in_h, in_w, src_stride, out_h, out_w, src_channel, a, b, 1, dst, num_threads);
}

}  // namespace kernels
}  // namespace cdd

namespace cdd {
namespace detail {

AxisWeights antialias_weights(int in, int out, bool trim) {
    AxisWeights a;
    const double scale = static_cast<double>(in) / out;
    const double support = scale >= 1.0 ? scale : 1.0;  // bilinear: interp_size / 2 = 1, widened by scale
    const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
    a.max_taps = static_cast<int>(std::ceil(support)) * 2 + 1;
    a.start.resize(out);
    a.size.resize(out);
    a.w.assign(static_cast<std::size_t>(out) * a.max_taps, 0.f);
    std::vector<double> w(a.max_taps);
    for (int i = 0; i < out; ++i) {
        const double center = scale * (i + 0.5);
        // truncation toward zero, then clamp: PyTorch's static_cast<int64_t>(x + 0.5)
        long long lo = std::max(static_cast<long long>(center - support + 0.5), 0LL);
        long long hi = std::min(static_cast<long long>(center + support + 0.5), static_cast<long long>(in));
        int n = static_cast<int>(std::max(hi - lo, 0LL));
        n = std::min(n, a.max_taps);
        double total = 0.0;
        for (int j = 0; j < n; ++j) {
            const double x = std::abs((j + lo - center + 0.5) * invscale);
            w[j] = x < 1.0 ? 1.0 - x : 0.0;
            total += w[j];
        }
        // drop zero-weight taps at both ends (exact: they add nothing)
        int b = 0, e = n;
        while (trim && b < e && w[b] == 0.0) ++b;
        while (trim && e > b && w[e - 1] == 0.0) --e;
        a.start[i] = static_cast<int>(lo) + b;
        a.size[i] = e - b;
        for (int j = b; j < e; ++j)
            a.w[static_cast<std::size_t>(i) * a.max_taps + (j - b)] =
                static_cast<float>(total != 0.0 ? w[j] / total : w[j]);
    }
    return a;
}

}  // namespace detail
}  // namespace cdd
