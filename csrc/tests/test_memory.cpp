// 10,000 consecutive scoring calls must not grow the process's memory beyond its warm-up
// level. RSS is read from /proc/self/status (VmRSS) after a warm-up and after the calls.
//   test_memory ENGINE_DIR [calls=10000] [allowed_growth_kib=2048]
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "cdd/cdd.hpp"

namespace {

long rss_kib() {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
    return -1;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: test_memory ENGINE_DIR [calls] [allowed_growth_kib]\n");
        return 2;
    }
    const int calls = argc > 2 ? std::atoi(argv[2]) : 10000;
    // allocator noise (arenas of the short-lived worker threads, thread-stack cache) stays
    // well under 2 MiB once warmed up; a leak of one map (4 KiB) per call would add 40 MiB
    const long allowed = argc > 3 ? std::atol(argv[3]) : 2048;
    cdd::EngineOptions o;
    o.num_threads = 2;
    cdd::Engine engine(argv[1], o);

    // frames of several sizes and formats, maps in every output mode: all code paths
    std::mt19937 rng(7);
    std::uniform_int_distribution<int> byte(0, 255);
    const int sizes[4][3] = {{48, 40, 3}, {31, 33, 1}, {64, 64, 3}, {20, 90, 3}};
    std::vector<std::vector<std::uint8_t>> buffers;
    std::vector<cdd::ImageView> views;
    for (const auto& s : sizes) {
        buffers.emplace_back(static_cast<std::size_t>(s[0]) * s[1] * s[2]);
        for (auto& b : buffers.back()) b = static_cast<std::uint8_t>(byte(rng));
        views.push_back(cdd::ImageView::packed(buffers.back().data(), s[1], s[0],
                                               s[2] == 1 ? cdd::PixelFormat::Mono8 : cdd::PixelFormat::BGR8));
    }
    const cdd::MapOutput modes[3] = {cdd::MapOutput::ModelSize, cdd::MapOutput::InputSize, cdd::MapOutput::None};
    auto call = [&](int i) {
        cdd::ScoreOptions so{modes[i % 3]};
        const std::size_t n = 1 + i % views.size();  // batches of 1..4 frames
        std::vector<cdd::Result> r = engine.score(views.data(), n, so);
        return r[0].score;
    };
    double sink = 0;
    const int warmup = std::min(calls, 500);
    for (int i = 0; i < warmup; ++i) sink += call(i);
    const long before = rss_kib();
    for (int i = 0; i < calls; ++i) sink += call(i);
    const long after = rss_kib();
    std::printf("{\"calls\": %d, \"rss_warm_kib\": %ld, \"rss_after_kib\": %ld, \"growth_kib\": %ld, "
                "\"allowed_kib\": %ld, \"checksum\": %.6g}\n",
                calls, before, after, after - before, allowed, sink);
    if (before < 0 || after < 0) {
        std::fprintf(stderr, "cannot read VmRSS from /proc/self/status\n");
        return 1;
    }
    if (after - before > allowed) {
        std::fprintf(stderr, "FAILED: RSS grew by %ld KiB over %d calls (allowed %ld)\n", after - before, calls, allowed);
        return 1;
    }
    return 0;
}
