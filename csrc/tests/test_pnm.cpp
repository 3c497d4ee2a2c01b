// The example program's PGM/PPM reader on hostile headers: sizes checked against the file's
// real length before anything is allocated, samples above maxval refused (never wrapped),
// maxval outside 1..65535 refused, only regular files opened.
//   test_pnm SCRATCH_DIR
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "check.hpp"
#include "pnm.hpp"

static std::string g_dir;

namespace {
std::string write(const std::string& name, const std::string& bytes) {
    const std::string p = g_dir + "/" + name;
    std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
    return p;
}

/// pnm::read(path) throws std::runtime_error whose message holds `fragment`.
void refuses(const std::string& path, const std::string& fragment) {
    try {
        pnm::read(path);
        check::fail(__FILE__, __LINE__, path + ": read, expected an error with \"" + fragment + "\"");
    } catch (const std::runtime_error& e) {
        CHECK_MSG(std::string(e.what()).find(fragment) != std::string::npos, e.what());
    }
}
}  // namespace

TEST_CASE("good files: binary and ASCII, 8 and 16 bit, maxval rescaled") {
    pnm::Image a = pnm::read(write("a.pgm", std::string("P5 3 2 255\n") + std::string("\x00\x10\x20\x30\x40\xff", 6)));
    CHECK(a.width == 3 && a.height == 2 && a.channels == 1 && a.pixels.size() == 6);
    CHECK(a.pixels[1] == 0x10 && a.pixels[5] == 0xff);
    pnm::Image b = pnm::read(write("b.ppm", "P3\n# comment\n1 1\n15\n15 0 7\n"));
    CHECK(b.channels == 3 && b.pixels[0] == 255 && b.pixels[1] == 0 && b.pixels[2] == 119);
    pnm::Image c = pnm::read(write("c.pgm", std::string("P5 2 1 65535\n") + std::string("\xff\xff\x80\x00", 4)));
    CHECK(c.pixels[0] == 255 && c.pixels[1] == 128);
}

TEST_CASE("a header claiming more pixels than the file holds is refused before allocating") {
    // 30000 x 30000 x 3 claimed by a 20-byte file: the old reader allocated 2.7 GB first
    refuses(write("huge.ppm", "P6 30000 30000 255\n"), "MAX_FRAME_PIXELS");
    refuses(write("big.ppm", "P6 10000 10000 255\n"), "bytes of pixel data");
    refuses(write("short.pgm", std::string("P5 4 4 255\n") + "abc"), "bytes of pixel data");
    refuses(write("short16.pgm", std::string("P5 2 1 65535\n") + "\xff\xff\x80"), "bytes of pixel data");
    refuses(write("short_ascii.pgm", "P2 100 100 255\n1 2 3\n"), "bytes of pixel data");
    refuses(write("giant.pgm", "P5 1000000 1000000 255\n"), "MAX_FRAME_PIXELS");
}

TEST_CASE("samples above maxval and maxval outside 1..65535 are refused") {
    refuses(write("over.pgm", "P2 2 1 100\n50 101\n"), "above maxval");
    refuses(write("over_bin.pgm", std::string("P5 2 1 100\n") + "\x10\xc8"), "above maxval");
    refuses(write("over16.pgm", std::string("P5 1 1 1000\n") + "\x03\xe9"), "above maxval");
    refuses(write("max0.pgm", "P2 1 1 0\n0\n"), "maxval");
    refuses(write("max_big.pgm", "P2 1 1 65536\n0\n"), "maxval");
}

TEST_CASE("only regular files: a FIFO or a directory is refused without blocking") {
    const std::string fifo = g_dir + "/fifo.pgm";
    std::filesystem::remove(fifo);
    CHECK(::mkfifo(fifo.c_str(), 0600) == 0);
    refuses(fifo, "not a regular file");
    std::filesystem::create_directories(g_dir + "/dir.pgm");
    refuses(g_dir + "/dir.pgm", "not a regular file");
}

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: test_pnm SCRATCH_DIR [filter]\n");
        return 2;
    }
    g_dir = argv[1];
    std::filesystem::create_directories(g_dir);
    argv[1] = argv[0];
    return check::run_all(argc - 1, argv + 1);
}
