// Minimal reader for binary/ASCII PGM (P5/P2, gray) and PPM (P6/P3, RGB), maxval 1..65535
// (16-bit samples are big-endian, as the format says), scaled to 8 bits. Enough for
// line-inspection test frames without an image library; errors are exceptions.
//
// The header is untrusted: the file must be a regular file, the pixel count is checked against
// cdd::limits::kMaxFramePixels and the sample count against the bytes the file really has
// BEFORE anything is allocated, and a sample above maxval is an error (never wrapped).
#pragma once

#include <sys/stat.h>

#include <cctype>
#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cdd/limits.hpp"

namespace pnm {

struct Image {
    int width = 0, height = 0, channels = 0;  // channels: 1 (PGM) or 3 (PPM, RGB order)
    std::vector<std::uint8_t> pixels;         // rows packed: stride = width * channels
};

namespace detail {
inline long read_int(std::istream& in, const std::string& path) {
    int c = in.get();
    for (;;) {  // skip white space and '#' comments
        while (c != EOF && std::isspace(c)) c = in.get();
        if (c != '#') break;
        while (c != EOF && c != '\n') c = in.get();
    }
    if (c == EOF || !std::isdigit(c)) throw std::runtime_error(path + ": malformed PNM header or sample");
    long v = 0;
    while (c != EOF && std::isdigit(c)) {
        v = v * 10 + (c - '0');
        if (v > 1000000000L) throw std::runtime_error(path + ": PNM value too large");
        c = in.get();
    }
    return v;  // the single white space after the value is consumed
}
}  // namespace detail

inline Image read(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) throw std::runtime_error(path + ": cannot open");
    if (!S_ISREG(st.st_mode)) throw std::runtime_error(path + ": not a regular file");
    const std::uint64_t file_bytes = static_cast<std::uint64_t>(st.st_size);
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open");
    char magic[2] = {0, 0};
    in.read(magic, 2);
    if (!in || magic[0] != 'P' || (magic[1] != '5' && magic[1] != '6' && magic[1] != '2' && magic[1] != '3'))
        throw std::runtime_error(path + ": not a PGM/PPM file (P2, P3, P5 or P6)");
    const bool binary = magic[1] == '5' || magic[1] == '6';
    Image img;
    img.channels = (magic[1] == '6' || magic[1] == '3') ? 3 : 1;
    const long width = detail::read_int(in, path);
    const long height = detail::read_int(in, path);
    const long maxval = detail::read_int(in, path);
    if (width <= 0 || height <= 0) throw std::runtime_error(path + ": zero-sized image");
    if (maxval < 1 || maxval > 65535)
        throw std::runtime_error(path + ": maxval " + std::to_string(maxval) + " is outside 1..65535");
    const std::uint64_t pixels = static_cast<std::uint64_t>(width) * static_cast<std::uint64_t>(height);
    if (pixels > cdd::limits::kMaxFramePixels)
        throw std::runtime_error(path + ": " + std::to_string(width) + " x " + std::to_string(height) +
                                 " pixels exceeds MAX_FRAME_PIXELS = " + std::to_string(cdd::limits::kMaxFramePixels));
    const std::uint64_t n = pixels * static_cast<std::uint64_t>(img.channels);
    const int sample_bytes = maxval < 256 ? 1 : 2;
    const std::streamoff header = in.tellg();
    const std::uint64_t left = header >= 0 && static_cast<std::uint64_t>(header) <= file_bytes
                                   ? file_bytes - static_cast<std::uint64_t>(header)
                                   : 0;
    // binary: n samples of 1 or 2 bytes; ASCII: at least a digit and a separator per sample
    const std::uint64_t need = binary ? n * sample_bytes : 2 * n - 1;
    if (left < need)
        throw std::runtime_error(path + ": header says " + std::to_string(width) + " x " + std::to_string(height) +
                                 " x " + std::to_string(img.channels) + " samples, but the file has only " +
                                 std::to_string(left) + " bytes of pixel data (truncated or corrupt file)");
    img.width = static_cast<int>(width);
    img.height = static_cast<int>(height);
    img.pixels.resize(static_cast<std::size_t>(n));
    auto to8 = [&](long v) -> std::uint8_t {
        if (v > maxval)
            throw std::runtime_error(path + ": sample value " + std::to_string(v) + " above maxval " +
                                     std::to_string(maxval));
        return static_cast<std::uint8_t>((v * 255 + maxval / 2) / maxval);  // rescaled to the 8-bit range
    };
    if (binary) {
        std::vector<std::uint8_t> raw(static_cast<std::size_t>(n) * sample_bytes);
        in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
        if (static_cast<std::size_t>(in.gcount()) != raw.size()) throw std::runtime_error(path + ": truncated pixel data");
        for (std::size_t i = 0; i < img.pixels.size(); ++i)
            img.pixels[i] = to8(sample_bytes == 1 ? raw[i] : (static_cast<long>(raw[2 * i]) << 8) | raw[2 * i + 1]);
    } else {
        for (auto& p : img.pixels) p = to8(detail::read_int(in, path));
    }
    return img;
}

}  // namespace pnm
