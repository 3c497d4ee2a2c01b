// Size limits on everything computed from untrusted numbers (engine.json fields, kernel
// arguments, frame headers). One set, shared with the Python runtime (docs/engine_format.md):
// a size is checked against these BEFORE anything is allocated from it, and a value beyond
// them is a cdd::Error naming the limit, never a crash or a runaway allocation.
#pragma once

#include <cstdint>

namespace cdd {
namespace limits {

/// Gaussian blur radius r = floor(truncate * sigma + 0.5) of the anomaly map: 2r + 1 taps.
constexpr int kMaxBlurRadius = 1024;
/// Pixels (width * height) of one input frame: 2**28.
constexpr std::uint64_t kMaxFramePixels = std::uint64_t(1) << 28;
/// Pixels (height * width) of a map or a model-resolution plane: 4096 * 4096.
constexpr std::uint64_t kMaxMapPixels = std::uint64_t(4096) * 4096;

}  // namespace limits
}  // namespace cdd
