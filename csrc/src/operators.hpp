// Small linear operators of the pre- and post-processing, shared by the CPU kernels and the
// GPU launchers (which upload them): 1-D resize windows and the blur/upsample matrices.
#pragma once

#include <vector>

namespace cdd {
namespace detail {

/// Windows of the 1-D antialiased bilinear resize (PyTorch interpolate(antialias=True),
/// align_corners=False): output i reads inputs [start[i], start[i] + size[i]) with weights
/// w[i * max_taps + j] (zero beyond size[i]). `trim` drops zero-weight taps at both ends
/// (exact); untrimmed windows are PyTorch's, whose starts never decrease.
struct AxisWeights {
    std::vector<int> start, size;
    std::vector<float> w;
    int max_taps = 0;
};
AxisWeights antialias_weights(int in, int out, bool trim = true);

/// Dense (n_out x n_in) matrix G U in double: align_corners=True linear upsampling from n_in
/// to n_out samples, then the Gaussian blur with scipy's reflect boundary (taps; none: U only).
std::vector<double> blur_upsample_matrix(int n_out, int n_in, const std::vector<double>& taps);

/// Dense (n x n) blur matrix G (reflect boundary).
std::vector<double> blur_matrix(int n, const std::vector<double>& taps);

}  // namespace detail
}  // namespace cdd
