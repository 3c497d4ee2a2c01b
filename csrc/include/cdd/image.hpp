// Image views: how a camera buffer is handed to the engine without a copy.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cdd {

/// Pixel layout of an 8-bit frame. Values are stable (they cross the C++/Python boundary).
enum class PixelFormat : int {
    RGB8 = 0,   ///< 3 bytes per pixel, R G B
    BGR8 = 1,   ///< 3 bytes per pixel, B G R (OpenCV's order)
    Mono8 = 2,  ///< 1 byte per pixel, replicated to R = G = B before the network
};

/// Bytes per pixel of a format; throws cdd::Error for a value outside the enum.
int channels(PixelFormat format);

/// "RGB8", "BGR8", "Mono8"; "unknown" for values outside the enum.
const char* to_string(PixelFormat format) noexcept;

/// A borrowed, read-only 8-bit frame. Rows may be padded (camera SDKs hand out padded
/// rows), so the row stride is explicit and must be >= width * channels(format).
/// The memory must stay valid while a score() call that received the view runs.
struct ImageView {
    const std::uint8_t* data = nullptr;
    int width = 0;
    int height = 0;
    std::size_t stride_bytes = 0;  ///< distance between the starts of two rows, in bytes
    PixelFormat format = PixelFormat::RGB8;

    /// A view of a tightly packed frame (stride = width * channels).
    static ImageView packed(const std::uint8_t* data, int width, int height, PixelFormat format);
};

/// Throws cdd::Error(InvalidArgument) naming image `index` when the view cannot be read:
/// null data, width or height <= 0, unknown format, stride smaller than a row, more than
/// limits::kMaxFramePixels pixels.
void validate(const ImageView& view, std::size_t index = 0);

}  // namespace cdd
