// The small linear operators of the pre- and post-processing, defined once for the C++ side:
// the CPU kernels (preprocess.cpp, anomaly_map.cpp), the GPU launchers (cuda/gpu_kernels.cpp,
// which upload them) and the tests' naive reference (csrc/tests/naive_map.hpp). Python has the
// same operators in cdd_engine/operators.py; the golden vectors of tests/golden/ (checked by
// csrc/tests/test_golden.cpp and test_cuda_kernels.cpp) tie the two together.
//
// - Gaussian taps and the radius rule: kernels::gaussian_taps / kernels::blur_radius (public,
//   cdd/kernels.hpp): r = floor(truncate * sigma + 0.5), 2r+1 normalised weights.
// - Reflect boundary: scipy's mode="reflect", the edge sample repeated (... c b a | a b c ...).
// - Upsampling: 1-D linear interpolation with align_corners=True (PyTorch's rule).
// - Resize: the antialiased triangle filter of PyTorch's interpolate(antialias=True).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace cdd {
namespace detail {

/// Index i in (-inf, inf) folded onto [0, n) as scipy's mode="reflect" (edge repeated, period 2n).
inline int reflect_index(long long i, int n) noexcept {
    const long long period = 2LL * n;
    long long r = i % period;
    if (r < 0) r += period;
    return static_cast<int>(r >= n ? period - 1 - r : r);
}

/// IEEE half -> float (fp16 features of the OpenVINO/TensorRT backends).
inline float half_to_float(std::uint16_t h) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    std::uint32_t exp = (h >> 10) & 0x1Fu;
    std::uint32_t mant = h & 0x3FFu;
    std::uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {  // subnormal half: normalise
            int e = -1;
            do {
                ++e;
                mant <<= 1;
            } while ((mant & 0x400u) == 0);
            bits = sign | static_cast<std::uint32_t>(127 - 15 - e) << 23 | (mant & 0x3FFu) << 13;
        }
    } else if (exp == 0x1F) {
        bits = sign | 0x7F800000u | mant << 13;  // inf / nan
    } else {
        bits = sign | (exp + 127 - 15) << 23 | mant << 13;
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

/// 1-D linear interpolation with align_corners=True from n_in to n_out samples: output i is
/// (1 - frac[i]) * x[i0[i]] + frac[i] * x[i0[i] + 1]; frac is 0 where i0 is the last sample
/// (no right neighbour). src = i * (n_in - 1) / (n_out - 1), 0 when n_out == 1.
inline void align_corners_coords(int n_out, int n_in, std::vector<int>& i0, std::vector<double>& frac) {
    i0.resize(n_out);
    frac.resize(n_out);
    const double scale = n_out > 1 ? static_cast<double>(n_in - 1) / (n_out - 1) : 0.0;
    for (int i = 0; i < n_out; ++i) {
        const double src = scale * i;
        const int k = std::min(static_cast<int>(src), n_in - 1);
        i0[i] = k;
        frac[i] = k == n_in - 1 ? 0.0 : src - k;
    }
}

/// Windows of the 1-D antialiased bilinear resize (PyTorch interpolate(antialias=True),
/// align_corners=False): output i reads inputs [start[i], start[i] + size[i]) with weights
/// w[i * max_taps + j] (zero beyond size[i]). `trim` drops zero-weight taps at both ends
/// (exact); untrimmed windows are PyTorch's, whose starts never decrease. (preprocess.cpp)
struct AxisWeights {
    std::vector<int> start, size;
    std::vector<float> w;
    int max_taps = 0;
};
AxisWeights antialias_weights(int in, int out, bool trim = true);

/// Dense (n_out x n_in) matrix G U in double: align_corners=True linear upsampling from n_in
/// to n_out samples, then the Gaussian blur with scipy's reflect boundary (taps; none: U only).
/// (anomaly_map.cpp)
std::vector<double> blur_upsample_matrix(int n_out, int n_in, const std::vector<double>& taps);

/// Dense (n x n) blur matrix G (reflect boundary). (anomaly_map.cpp)
std::vector<double> blur_matrix(int n, const std::vector<double>& taps);

/// [lo0, hi0, lo1, hi1, ...]: per tile of `tile` rows of the row-major (rows x cols) matrix m,
/// the range of its non-zero columns ([0, 0) for an all-zero tile); tile 1 gives each row's
/// range. Banded products contract over [lo, hi) only.
template <class T>
std::vector<int> band_windows(const T* m, int rows, int cols, int tile) {
    std::vector<int> out;
    for (int r0 = 0; r0 < rows; r0 += tile) {
        int lo = cols, hi = 0;
        for (int r = r0; r < std::min(rows, r0 + tile); ++r)
            for (int c = 0; c < cols; ++c)
                if (m[static_cast<std::size_t>(r) * cols + c] != T(0)) {
                    lo = std::min(lo, c);
                    hi = std::max(hi, c + 1);
                }
        if (lo >= hi) lo = hi = 0;
        out.push_back(lo);
        out.push_back(hi);
    }
    return out;
}

}  // namespace detail
}  // namespace cdd
