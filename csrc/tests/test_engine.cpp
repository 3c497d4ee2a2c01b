// The engine end to end on the tiny test engine: scores equal the Python reference on the
// demo frames, maps at model and input size, batching, thresholds, strides and formats, and
// one Engine shared by 8 threads giving the serial results.
//   test_engine ENGINE_DIR FRAMES_DIR
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "../examples/pnm.hpp"
#include "cdd/cdd.hpp"
#include "check.hpp"
#include "engine_variants.hpp"

using namespace cdd;

static std::string g_engine, g_frames;

namespace {

struct Frames {
    std::vector<pnm::Image> images;
    std::vector<ImageView> views;
    std::vector<double> ref_scores;
    double threshold = 0;
};

const Frames& frames() {
    static Frames f = [] {
        Frames f;
        std::ifstream in(g_frames + "/reference.json");
        std::stringstream ss;
        ss << in.rdbuf();
        const cdd::json::Value r = cdd::json::parse(ss.str());
        for (const auto& name : r.find("files")->array) f.images.push_back(pnm::read(g_frames + "/" + name.string));
        for (const auto& s : r.find("scores")->array) f.ref_scores.push_back(s.number);
        f.threshold = r.find("threshold")->number;
        for (const auto& im : f.images)
            f.views.push_back(ImageView::packed(im.pixels.data(), im.width, im.height,
                                                im.channels == 1 ? PixelFormat::Mono8 : PixelFormat::RGB8));
        return f;
    }();
    return f;
}

EngineOptions opts(int threads = 2, int streams = 1) {
    EngineOptions o;
    o.num_threads = threads;
    o.num_streams = streams;
    return o;
}

}  // namespace

TEST_CASE("scores equal the Python reference on the demo frames (1e-5 relative)") {
    Engine e(g_engine, opts());
    const Frames& f = frames();
    const std::vector<Result> r = e.score(f.views.data(), f.views.size());
    CHECK(r.size() == f.views.size());
    int flagged = 0;
    for (std::size_t i = 0; i < r.size(); ++i) {
        CHECK_CLOSE(r[i].score, f.ref_scores[i], 1e-5, std::fabs(f.ref_scores[i]));
        CHECK(r[i].threshold == e.threshold());
        CHECK(r[i].is_anomalous == (r[i].score > r[i].threshold));
        flagged += r[i].is_anomalous;
    }
    CHECK_CLOSE(e.threshold(), f.threshold, 1e-7, f.threshold);
    CHECK(flagged > 0 && flagged < static_cast<int>(r.size()));  // the median threshold splits them
}

TEST_CASE("distances inside the network or the whole map in C++: the same maps (1e-5)") {
    EngineOptions o = opts();
    o.distances_in_network = false;
    Engine features_out(g_engine, o);
    Engine in_graph(g_engine, opts());
    const Frames& f = frames();
    const auto a = features_out.score(f.views.data(), f.views.size());
    const auto b = in_graph.score(f.views.data(), f.views.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
        CHECK_CLOSE(a[i].score, f.ref_scores[i], 1e-5, std::fabs(f.ref_scores[i]));
        float worst = 0, scale = 0;
        for (std::size_t k = 0; k < a[i].map.size(); ++k) {
            worst = std::max(worst, std::fabs(a[i].map[k] - b[i].map[k]));
            scale = std::max(scale, std::fabs(a[i].map[k]));
        }
        CHECK_MSG(worst <= 1e-5f * scale, "frame " + std::to_string(i) + ": maps differ by " + std::to_string(worst / scale));
    }
}

TEST_CASE("maps: model size (max = score), input size, none") {
    Engine e(g_engine, opts());
    const Frames& f = frames();
    const auto& info = e.info();
    ScoreOptions so;
    so.map = MapOutput::ModelSize;
    auto r = e.score(f.views.data(), 3, so);
    for (const auto& x : r) {
        CHECK(x.map_height == info.image_height && x.map_width == info.image_width);
        CHECK(x.map.size() == static_cast<std::size_t>(info.image_height) * info.image_width);
        CHECK(*std::max_element(x.map.begin(), x.map.end()) == x.score);
    }
    so.map = MapOutput::InputSize;
    auto ri = e.score(f.views.data(), 3, so);
    for (std::size_t i = 0; i < 3; ++i) {
        CHECK(ri[i].map_height == f.views[i].height && ri[i].map_width == f.views[i].width);
        CHECK(ri[i].score == r[i].score);
        // an antialiased resize is an average: it cannot exceed the model-size maximum
        CHECK(*std::max_element(ri[i].map.begin(), ri[i].map.end()) <= r[i].score * (1 + 1e-6f));
    }
    so.map = MapOutput::None;
    auto rn = e.score(f.views.data(), 3, so);
    for (std::size_t i = 0; i < 3; ++i) CHECK(rn[i].map.empty() && rn[i].score == r[i].score);
    CHECK(e.map_shape(f.views[1], MapOutput::InputSize) == std::make_pair(f.views[1].height, f.views[1].width));
}

TEST_CASE("batches larger than max_batch are split; results match one-by-one scoring") {
    Engine e(g_engine, opts());
    const Frames& f = frames();
    CHECK(static_cast<int>(f.views.size()) > e.info().max_batch);
    const auto all = e.score(f.views.data(), f.views.size());
    for (std::size_t i = 0; i < f.views.size(); ++i) {
        const Result one = e.score(f.views[i]);
        CHECK_CLOSE(one.score, all[i].score, 1e-6, std::fabs(all[i].score));
    }
    // allocation-free variant with only some outputs requested
    std::vector<float> scores(f.views.size());
    e.score_into(f.views.data(), f.views.size(), ScoreOptions{MapOutput::None}, scores.data(), nullptr, nullptr);
    for (std::size_t i = 0; i < scores.size(); ++i) CHECK(scores[i] == all[i].score);
}

TEST_CASE("frames per request: by precision by default; any split over streams gives the same results") {
    const Frames& f = frames();
    EngineOptions o = opts(2, 2);
    Engine by_default(g_engine, o);
    const EngineInfo& info = by_default.info();
    CHECK(info.frames_per_request == (info.precision == "int8" ? std::min(kInt8FramesPerRequest, info.max_batch) : 1));
    const auto want = by_default.score(f.views.data(), f.views.size());
    for (int k = 1; k <= info.max_batch; ++k) {
        o.frames_per_request = k;
        Engine e(g_engine, o);
        CHECK(e.info().frames_per_request == k);
        const auto got = e.score(f.views.data(), f.views.size());
        for (std::size_t i = 0; i < got.size(); ++i) {
            CHECK_CLOSE(got[i].score, want[i].score, 1e-6, std::fabs(want[i].score));
            float worst = 0;
            for (std::size_t p = 0; p < got[i].map.size(); ++p)
                worst = std::max(worst, std::fabs(got[i].map[p] - want[i].map[p]));
            CHECK_MSG(worst <= 1e-6f * std::fabs(want[i].score),
                      "frames_per_request " + std::to_string(k) + ", frame " + std::to_string(i));
        }
    }
}

TEST_CASE("threshold override and sensitivity") {
    const Frames& f = frames();
    EngineOptions o = opts();
    o.threshold = -1.f;  // below every score: all anomalous
    Engine lo(g_engine, o);
    for (const auto& r : lo.score(f.views.data(), f.views.size())) CHECK(r.is_anomalous && r.threshold == -1.f);
    o = opts();
    o.sensitivity = 0.5f;  // threshold doubled
    Engine half(g_engine, o);
    CHECK_CLOSE(half.threshold(), 2 * half.info().calibrated_threshold, 1e-7, half.threshold());
    o.threshold = 3.f;  // an explicit threshold wins over sensitivity
    Engine both(g_engine, o);
    CHECK(both.threshold() == 3.f);
}

TEST_CASE("padded rows, BGR order and Mono8 give the scores of the packed RGB frame") {
    Engine e(g_engine, opts());
    const pnm::Image& im = frames().images[1];  // an RGB frame of odd size
    CHECK(im.channels == 3);
    const ImageView packed = ImageView::packed(im.pixels.data(), im.width, im.height, PixelFormat::RGB8);
    const std::size_t row = static_cast<std::size_t>(im.width) * 3, stride = row + 13;
    std::vector<std::uint8_t> padded(stride * im.height, 0xAB), bgr(im.pixels.size());
    for (int y = 0; y < im.height; ++y) std::memcpy(&padded[y * stride], &im.pixels[y * row], row);
    for (std::size_t i = 0; i < bgr.size(); i += 3) {
        bgr[i] = im.pixels[i + 2];
        bgr[i + 1] = im.pixels[i + 1];
        bgr[i + 2] = im.pixels[i];
    }
    const float base = e.score(packed).score;
    CHECK(e.score(ImageView{padded.data(), im.width, im.height, stride, PixelFormat::RGB8}).score == base);
    CHECK(e.score(ImageView::packed(bgr.data(), im.width, im.height, PixelFormat::BGR8)).score == base);
    std::vector<std::uint8_t> gray(static_cast<std::size_t>(im.width) * im.height), gray3(gray.size() * 3);
    for (std::size_t i = 0; i < gray.size(); ++i) gray[i] = gray3[3 * i] = gray3[3 * i + 1] = gray3[3 * i + 2] = im.pixels[3 * i];
    CHECK(e.score(ImageView::packed(gray.data(), im.width, im.height, PixelFormat::Mono8)).score ==
          e.score(ImageView::packed(gray3.data(), im.width, im.height, PixelFormat::RGB8)).score);
}

TEST_CASE("one Engine shared by 8 threads gives the serial results") {
    Engine e(g_engine, opts(2, 2));  // 2 inference requests for 8 callers: they queue
    const Frames& f = frames();
    // each thread scores its own rotation of the frames, in batches of 3
    auto batch_of = [&](int t) {
        std::vector<ImageView> v;
        for (std::size_t i = 0; i < 3; ++i) v.push_back(f.views[(t + i) % f.views.size()]);
        return v;
    };
    std::vector<std::vector<Result>> serial(8), parallel(8);
    for (int t = 0; t < 8; ++t) {
        const auto v = batch_of(t);
        serial[t] = e.score(v.data(), v.size());
    }
    std::atomic<int> errors{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < 8; ++t)
        pool.emplace_back([&, t] {
            try {
                const auto v = batch_of(t);
                for (int rep = 0; rep < 3; ++rep) parallel[t] = e.score(v.data(), v.size());
            } catch (...) {
                ++errors;
            }
        });
    for (auto& th : pool) th.join();
    CHECK(errors == 0);
    for (int t = 0; t < 8; ++t)
        for (std::size_t i = 0; i < serial[t].size(); ++i) {
            CHECK(parallel[t][i].score == serial[t][i].score);
            CHECK(parallel[t][i].map == serial[t][i].map);
        }
}

TEST_CASE("an Engine can be moved; the moved-from one refuses to score") {
    Engine a(g_engine, opts());
    Engine b(std::move(a));
    CHECK(b.score(frames().views[0]).map.size() > 0);
    REQUIRE_THROWS(a.score(frames().views.data(), 1), ErrorCode::InvalidArgument, "moved-from");  // NOLINT
}

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: test_engine ENGINE_DIR FRAMES_DIR [filter]\n");
        return 2;
    }
    g_engine = argv[1];
    g_frames = argv[2];
    argv[2] = argv[0];
    return check::run_all(argc - 2, argv + 2);
}
