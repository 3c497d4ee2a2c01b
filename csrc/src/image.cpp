// Image view validation: every way a view can be unreadable becomes a cdd::Error.
#include <limits>
#include <sstream>

#include "cdd/error.hpp"
#include "cdd/image.hpp"
#include "cdd/limits.hpp"

namespace cdd {

int channels(PixelFormat format) {
    switch (format) {
        case PixelFormat::RGB8:
        case PixelFormat::BGR8:
            return 3;
        case PixelFormat::Mono8:
            return 1;
    }
    throw Error(ErrorCode::InvalidArgument,
                "unknown pixel format " + std::to_string(static_cast<int>(format)) +
                    " (expected RGB8 = 0, BGR8 = 1 or Mono8 = 2)");
}

const char* to_string(PixelFormat format) noexcept {
    switch (format) {
        case PixelFormat::RGB8:
            return "RGB8";
        case PixelFormat::BGR8:
            return "BGR8";
        case PixelFormat::Mono8:
            return "Mono8";
    }
    return "unknown";
}

ImageView ImageView::packed(const std::uint8_t* data, int width, int height, PixelFormat format) {
    ImageView v;
    v.data = data;
    v.width = width;
    v.height = height;
    v.format = format;
    // a bad format is reported by validate(); here it only must not throw
    const int c = format == PixelFormat::Mono8 ? 1 : 3;
    v.stride_bytes = width > 0 ? static_cast<std::size_t>(width) * c : 0;
    return v;
}

void validate(const ImageView& view, std::size_t index) {
    auto fail = [&](const std::string& what) {
        std::ostringstream os;
        os << "image " << index << ": " << what;
        throw Error(ErrorCode::InvalidArgument, os.str());
    };
    int c = 0;
    try {
        c = channels(view.format);
    } catch (const Error& e) {
        fail(e.what());
    }
    if (view.data == nullptr) fail("data pointer is null");
    if (view.width <= 0 || view.height <= 0)
        fail("zero-sized frame: width " + std::to_string(view.width) + ", height " +
             std::to_string(view.height) + " (both must be > 0)");
    const std::uint64_t pixels = static_cast<std::uint64_t>(view.width) * static_cast<std::uint64_t>(view.height);
    if (pixels > limits::kMaxFramePixels)  // the resize buffers and input-size maps grow with it
        fail("frame of " + std::to_string(view.width) + " x " + std::to_string(view.height) + " = " +
             std::to_string(pixels) + " pixels exceeds MAX_FRAME_PIXELS = " + std::to_string(limits::kMaxFramePixels));
    const std::size_t row = static_cast<std::size_t>(view.width) * static_cast<std::size_t>(c);
    if (view.stride_bytes < row)
        fail("row stride " + std::to_string(view.stride_bytes) + " bytes is smaller than a row of " +
             std::to_string(view.width) + " " + to_string(view.format) + " pixels (" + std::to_string(row) +
             " bytes)");
    if (static_cast<std::size_t>(view.height) > std::numeric_limits<std::size_t>::max() / view.stride_bytes)
        fail("frame size overflows: height " + std::to_string(view.height) + " x stride " +
             std::to_string(view.stride_bytes));
}

}  // namespace cdd
