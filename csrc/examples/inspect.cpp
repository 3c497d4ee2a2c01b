// cdd_inspect: a line-inspection style program on libcdd_engine.
//
//   cdd_inspect --engine ENGINE_DIR [--batch N] [--threads N] [--streams N]
//               [--threshold X | --sensitivity S] [--map-size model|input|none] IMAGE...
//
// Loads the engine once, reads the frames (PGM/PPM; any format OpenCV reads when built with
// it), scores them in batches and prints one JSON line per frame:
//   {"image": "a.ppm", "width": 640, "height": 480, "score": 1.23, "threshold": 1.1,
//    "is_anomalous": true, "map_max": 1.23}
// A frame that cannot be read gets {"image": ..., "error": "..."} and the run goes on; the
// exit status is 1 when any frame failed, 2 when the engine could not be loaded.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cdd/cdd.hpp"
#include "pnm.hpp"

#ifdef CDD_EXAMPLE_WITH_OPENCV
#include <opencv2/imgcodecs.hpp>
#endif

namespace {

struct Frame {
    std::string path;
    std::vector<std::uint8_t> pixels;
    cdd::ImageView view;
    std::string error;
};

std::string json_escape(const std::string& s) {
    std::string o;
    for (char c : s) {
        switch (c) {
            case '"': o += "\\\""; break;
            case '\\': o += "\\\\"; break;
            case '\n': o += "\\n"; break;
            case '\t': o += "\\t"; break;
            default:
                if (static_cast<unsigned char>(c) < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    o += buf;
                } else {
                    o += c;
                }
        }
    }
    return o;
}

bool has_pnm_suffix(const std::string& p) {
    const auto dot = p.rfind('.');
    if (dot == std::string::npos) return false;
    std::string ext = p.substr(dot + 1);
    for (auto& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return ext == "pgm" || ext == "ppm" || ext == "pnm";
}

/// Reads one frame into `f` (pixels owned by f, view pointing at them) or sets f.error.
void load(Frame& f) {
    try {
        if (has_pnm_suffix(f.path)) {
            pnm::Image img = pnm::read(f.path);
            f.pixels = std::move(img.pixels);
            f.view = cdd::ImageView::packed(f.pixels.data(), img.width, img.height,
                                            img.channels == 1 ? cdd::PixelFormat::Mono8 : cdd::PixelFormat::RGB8);
            return;
        }
#ifdef CDD_EXAMPLE_WITH_OPENCV
        cv::Mat m = cv::imread(f.path, cv::IMREAD_UNCHANGED);
        if (m.empty()) throw std::runtime_error(f.path + ": OpenCV cannot read it");
        if (m.depth() != CV_8U || (m.channels() != 1 && m.channels() != 3))
            throw std::runtime_error(f.path + ": need an 8-bit gray or colour image");
        const std::size_t row = static_cast<std::size_t>(m.cols) * m.channels();
        f.pixels.resize(row * m.rows);
        for (int y = 0; y < m.rows; ++y) std::memcpy(f.pixels.data() + y * row, m.ptr(y), row);
        f.view = cdd::ImageView::packed(f.pixels.data(), m.cols, m.rows,
                                        m.channels() == 1 ? cdd::PixelFormat::Mono8 : cdd::PixelFormat::BGR8);
#else
        throw std::runtime_error(f.path + ": only PGM/PPM files can be read (this build has no OpenCV)");
#endif
    } catch (const std::exception& e) {
        f.error = e.what();
    }
}

[[noreturn]] void usage(const char* msg) {
    std::fprintf(stderr,
                 "%s\nusage: cdd_inspect --engine ENGINE_DIR [--batch N] [--threads N] [--streams N]\n"
                 "                   [--threshold X | --sensitivity S] [--map-size model|input|none] IMAGE...\n",
                 msg);
    std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
    std::string engine_dir;
    int batch = 8;
    cdd::EngineOptions opt;
    cdd::ScoreOptions score_opt;
    score_opt.map = cdd::MapOutput::ModelSize;
    std::vector<std::string> paths;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage(("missing value after " + a).c_str());
            return argv[++i];
        };
        try {
            if (a == "--engine") engine_dir = value();
            else if (a == "--batch") batch = std::stoi(value());
            else if (a == "--threads") opt.num_threads = std::stoi(value());
            else if (a == "--streams") opt.num_streams = std::stoi(value());
            else if (a == "--threshold") opt.threshold = std::stof(value());
            else if (a == "--sensitivity") opt.sensitivity = std::stof(value());
            else if (a == "--device") opt.device = value();
            else if (a == "--map-size") {
                const std::string m = value();
                if (m == "model") score_opt.map = cdd::MapOutput::ModelSize;
                else if (m == "input") score_opt.map = cdd::MapOutput::InputSize;
                else if (m == "none") score_opt.map = cdd::MapOutput::None;
                else usage("--map-size must be model, input or none");
            } else if (a == "-h" || a == "--help") usage("cdd_inspect: score frames with a cdd-engine engine");
            else if (!a.empty() && a[0] == '-') usage(("unknown option " + a).c_str());
            else paths.push_back(a);
        } catch (const std::logic_error&) {  // std::stoi / stof on a non-number
            usage(("bad number for " + a).c_str());
        }
    }
    if (engine_dir.empty() || paths.empty()) usage("need --engine and at least one image");
    if (batch < 1) usage("--batch must be >= 1");

    std::unique_ptr<cdd::Engine> engine;
    try {
        engine.reset(new cdd::Engine(engine_dir, opt));
    } catch (const cdd::Error& e) {
        std::fprintf(stderr, "cdd_inspect: cannot load engine: %s\n", e.what());
        return 2;
    }
    int failed = 0;
    for (std::size_t off = 0; off < paths.size(); off += batch) {
        const std::size_t n = std::min<std::size_t>(batch, paths.size() - off);
        std::vector<Frame> frames(n);
        std::vector<cdd::ImageView> views;
        std::vector<std::size_t> index;  // frame index of each view
        for (std::size_t i = 0; i < n; ++i) {
            frames[i].path = paths[off + i];
            load(frames[i]);
            if (frames[i].error.empty()) {
                views.push_back(frames[i].view);
                index.push_back(i);
            }
        }
        std::vector<cdd::Result> results;
        std::string batch_error;
        try {
            if (!views.empty()) results = engine->score(views.data(), views.size(), score_opt);
        } catch (const cdd::Error& e) {
            batch_error = e.what();
        }
        std::size_t r = 0;
        for (std::size_t i = 0; i < n; ++i) {
            const Frame& f = frames[i];
            std::string err = f.error.empty() ? batch_error : f.error;
            if (!err.empty()) {
                ++failed;
                std::printf("{\"image\": \"%s\", \"error\": \"%s\"}\n", json_escape(f.path).c_str(),
                            json_escape(err).c_str());
                if (f.error.empty()) ++r;
                continue;
            }
            const cdd::Result& res = results[r++];
            float map_max = 0.f;
            for (float v : res.map) map_max = std::max(map_max, v);
            std::printf("{\"image\": \"%s\", \"width\": %d, \"height\": %d, \"score\": %.9g, \"threshold\": %.9g, "
                        "\"is_anomalous\": %s",
                        json_escape(f.path).c_str(), f.view.width, f.view.height, res.score, res.threshold,
                        res.is_anomalous ? "true" : "false");
            if (!res.map.empty())
                std::printf(", \"map_height\": %d, \"map_width\": %d, \"map_max\": %.9g", res.map_height,
                            res.map_width, map_max);
            std::printf("}\n");
        }
        std::fflush(stdout);
    }
    return failed ? 1 : 0;
}
