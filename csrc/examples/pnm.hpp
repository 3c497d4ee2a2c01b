// Minimal reader for binary/ASCII PGM (P5/P2, gray) and PPM (P6/P3, RGB), 8-bit (maxval <= 255).
// Enough for line-inspection test frames without an image library; errors are exceptions.
#pragma once

#include <cctype>
#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace pnm {

struct Image {
    int width = 0, height = 0, channels = 0;  // channels: 1 (PGM) or 3 (PPM, RGB order)
    std::vector<std::uint8_t> pixels;         // rows packed: stride = width * channels
};

namespace detail {
inline int read_int(std::istream& in, const std::string& path) {
    int c = in.get();
    for (;;) {  // skip white space and '#' comments
        while (c != EOF && std::isspace(c)) c = in.get();
        if (c != '#') break;
        while (c != EOF && c != '\n') c = in.get();
    }
    if (c == EOF || !std::isdigit(c)) throw std::runtime_error(path + ": malformed PNM header");
    long v = 0;
    while (c != EOF && std::isdigit(c)) {
        v = v * 10 + (c - '0');
        if (v > 1000000000L) throw std::runtime_error(path + ": PNM header value too large");
        c = in.get();
    }
    return static_cast<int>(v);  // the single white space after the value is consumed
}
}  // namespace detail

inline Image read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open");
    char magic[2] = {0, 0};
    in.read(magic, 2);
    if (!in || magic[0] != 'P' || (magic[1] != '5' && magic[1] != '6' && magic[1] != '2' && magic[1] != '3'))
        throw std::runtime_error(path + ": not a PGM/PPM file (P2, P3, P5 or P6)");
    Image img;
    img.channels = (magic[1] == '6' || magic[1] == '3') ? 3 : 1;
    img.width = detail::read_int(in, path);
    img.height = detail::read_int(in, path);
    const int maxval = detail::read_int(in, path);
    if (img.width <= 0 || img.height <= 0) throw std::runtime_error(path + ": zero-sized image");
    if (maxval <= 0 || maxval > 255) throw std::runtime_error(path + ": only 8-bit PNM (maxval <= 255) is supported");
    const std::size_t n = static_cast<std::size_t>(img.width) * img.height * img.channels;
    img.pixels.resize(n);
    if (magic[1] == '5' || magic[1] == '6') {
        in.read(reinterpret_cast<char*>(img.pixels.data()), static_cast<std::streamsize>(n));
        if (static_cast<std::size_t>(in.gcount()) != n) throw std::runtime_error(path + ": truncated pixel data");
    } else {
        for (std::size_t i = 0; i < n; ++i) img.pixels[i] = static_cast<std::uint8_t>(detail::read_int(in, path));
    }
    if (maxval != 255)  // rescale to the full 8-bit range
        for (auto& p : img.pixels) p = static_cast<std::uint8_t>((p * 255 + maxval / 2) / maxval);
    return img;
}

}  // namespace pnm
