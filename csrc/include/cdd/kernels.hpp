// CPU kernels of the engine, public so that tests, benchmarks and programs that run
// their own network can use them.
//
// - preprocess(): uint8 frame (row stride, RGB8/BGR8/Mono8) -> antialiased bilinear resize
//   (PyTorch interpolate(mode="bilinear", align_corners=False, antialias=True)) ->
//   (x / 255 - mean) / std, written as planar float32 (3, out_h, out_w).
// - AnomalyMap: the fused anomaly map of docs/anomaly_map.md. Each feature element is read
//   once; for mode "add" the upsampling and the blur are folded into small precomputed
//   matrices, map = sum_s A_s d_s B_s^T with A_s = G_H U_s^H (H x h_s), B_s = G_W U_s^W
//   (W x w_s), so no upsampled per-scale map is ever written.
// - gaussian_taps() / blur_radius(): the blur's taps and radius rule (docs/anomaly_map.md).
// Test-only helpers (the unfused naive map, reflect_index, half_to_float) are not part of the
// library: they live in csrc/tests/naive_map.hpp and the private src/operators.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "cdd/image.hpp"

namespace cdd {
namespace kernels {

enum class DType : int { Float32 = 0, Float16 = 1 };
enum class MapMode : int { Add = 0, Mul = 1 };

/// Per-channel (R, G, B) normalisation of [0, 1] pixels: (x - mean) / std.
struct Normalization {
    float mean[3] = {0.485f, 0.456f, 0.406f};
    float std[3] = {0.229f, 0.224f, 0.225f};
};

/// uint8 frame -> normalised planar float32 RGB (3, out_h, out_w) at `out`.
/// Validates the view (cdd::Error on bad input). `num_threads` splits rows.
void preprocess(const ImageView& view, int out_h, int out_w, const Normalization& norm, float* out,
                int num_threads = 1);

/// Antialiased bilinear resize of one float plane (the same filter as preprocess()),
/// used to bring a map to the input frame's size. src rows are `src_stride` floats apart.
void resize_plane(const float* src, int in_h, int in_w, std::size_t src_stride, float* dst, int out_h,
                  int out_w, int num_threads = 1);

/// Teacher and student features of one scale of one image: contiguous (C, h, w).
struct FeaturePair {
    const void* teacher = nullptr;
    const void* student = nullptr;
    DType dtype = DType::Float32;
    int channels = 0, height = 0, width = 0;
};

/// Settings of the anomaly map (engine.json "anomaly_map").
struct MapSettings {
    MapMode mode = MapMode::Add;
    double sigma = 4.0;     ///< Gaussian sigma; 0 disables the blur
    double truncate = 4.0;  ///< radius = int(truncate * sigma + 0.5): 16 -> 33 taps
    double eps = 1e-8;      ///< norm clamp of the cosine similarity
};

/// The fused anomaly map for a fixed model resolution and fixed per-scale feature sizes.
/// Construction precomputes the small matrices; operator() and run_batch() are const and
/// thread-safe.
class AnomalyMap {
public:
    /// `scales`: (h_s, w_s) of each feature scale, in the order the features are passed.
    /// Sizes are checked against limits::kMaxMapPixels (the map, each feature plane and each
    /// out x in upsampling matrix) and the blur against limits::kMaxBlurRadius before any
    /// allocation. A NaN or infinite map entry makes the score NaN (never a finite max).
    AnomalyMap(int out_height, int out_width, std::vector<std::pair<int, int>> scales,
               const MapSettings& settings = MapSettings());

    int out_height() const noexcept { return out_h_; }
    int out_width() const noexcept { return out_w_; }
    std::size_t num_scales() const noexcept { return scales_.size(); }

    /// One image: `levels[s]` for s < num_scales(). Writes the map (out_h x out_w floats)
    /// to `map` unless it is null, and returns the score (max of the map).
    float operator()(const FeaturePair* levels, float* map, int num_threads = 1) const;

    /// `batch` images whose scale-s features are at levels[s].teacher/student + b * C*h*w
    /// elements. maps (batch x out_h x out_w, may be null) and scores (batch). Threads
    /// go over images, or inside an image when batch < num_threads.
    void run_batch(const FeaturePair* levels, std::size_t batch, float* maps, float* scores,
                   int num_threads = 1) const;

    /// The same from per-pixel cosine distances computed elsewhere (e.g. inside the network):
    /// distances[s] points at (batch, h_s, w_s) floats, d = 1 - <T,S> / (max|T|,eps)(max|S|,eps).
    /// Only the small part runs here (upsampling, blur, sum/product, max).
    void run_batch_from_distances(const float* const* distances, std::size_t batch, float* maps, float* scores,
                                  int num_threads = 1) const;

private:
    struct Scale {
        int h, w;
        std::vector<float> A;            // (out_h x h) = G_H U^H, row-major
        std::vector<int> a_lo, a_hi;     // nonzero column range of each row of A
        std::vector<float> Bt;           // (w x out_w) = (G_W U^W)^T, row-major
        std::vector<int> b_lo, b_hi;     // nonzero column range of each row of Bt
        std::vector<int> up_i0;          // mul mode: align_corners source rows/cols and weights
        std::vector<float> up_fy;
        std::vector<int> up_j0;
        std::vector<float> up_fx;
    };
    void check_levels(const FeaturePair* levels) const;
    void distances(const FeaturePair* levels, std::size_t image, float* dist, int num_threads) const;
    float map_add(const float* dist, float* map, float* scratch, int num_threads) const;
    float map_mul(const float* dist, float* map, float* scratch, int num_threads) const;
    std::size_t scratch_floats() const;
    /// Per image i of a batch: fill(i, dist, threads) writes its distances, then the map and score.
    template <class Fill>
    void for_each_image(std::size_t batch, float* maps, float* scores, int num_threads, Fill&& fill) const;

    int out_h_, out_w_;
    MapSettings settings_;
    std::vector<Scale> scales_;
    std::vector<std::size_t> dist_offset_;  // offset of scale s in the per-image distance buffer
    std::size_t dist_floats_ = 0;
    std::vector<float> taps_;               // normalised Gaussian taps, 2r+1
};

/// Blur radius r = floor(truncate * sigma + 0.5), computed in double; throws cdd::Error
/// (InvalidArgument) unless sigma is finite and > 0, truncate finite and >= 0 and
/// r <= limits::kMaxBlurRadius.
int blur_radius(double sigma, double truncate);

/// Normalised Gaussian taps of scipy.ndimage.gaussian_filter: 2r+1 weights,
/// r = blur_radius(sigma, truncate) (same checks).
std::vector<double> gaussian_taps(double sigma, double truncate);

}  // namespace kernels
}  // namespace cdd
