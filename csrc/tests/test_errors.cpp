// Bad input never crashes: every broken image view, engine directory and option is a
// cdd::Error with a message saying what is wrong.
//   test_errors ENGINE_DIR SCRATCH_DIR
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <limits>
#include <regex>
#include <sstream>
#include <vector>

#include "cdd/cdd.hpp"
#include "check.hpp"
#include "engine_variants.hpp"

using namespace cdd;

static std::string g_engine, g_scratch;

namespace {
std::string variant(const std::string& name, const std::function<void(variants::Value&)>& edit,
                    const std::vector<std::string>& skip = {}) {
    return variants::make(g_engine, g_scratch, name, edit, skip);
}
EngineOptions fast() {
    EngineOptions o;
    o.num_threads = 1;
    return o;
}
}  // namespace

TEST_CASE("image views: null, zero-sized, short stride, unknown format, null view array") {
    Engine e(g_engine, fast());
    std::vector<std::uint8_t> px(40 * 30 * 3, 77);
    const ImageView good = ImageView::packed(px.data(), 40, 30, PixelFormat::RGB8);
    auto one = [&](ImageView v) { return e.score(&v, 1); };
    ImageView v = good;
    v.data = nullptr;
    REQUIRE_THROWS(one(v), ErrorCode::InvalidArgument, "null");
    v = good;
    v.width = 0;
    REQUIRE_THROWS(one(v), ErrorCode::InvalidArgument, "zero-sized");
    v = good;
    v.height = -3;
    REQUIRE_THROWS(one(v), ErrorCode::InvalidArgument, "zero-sized");
    v = good;
    v.stride_bytes = 40 * 3 - 1;
    REQUIRE_THROWS(one(v), ErrorCode::InvalidArgument, "smaller than a row");
    v = good;
    v.format = static_cast<PixelFormat>(42);
    REQUIRE_THROWS(one(v), ErrorCode::InvalidArgument, "unknown pixel format");
    REQUIRE_THROWS(e.score(nullptr, 2), ErrorCode::InvalidArgument, "null");
    // a bad view anywhere in a batch names its index, and nothing is scored
    std::vector<ImageView> batch(6, good);
    batch[4].stride_bytes = 0;
    REQUIRE_THROWS(e.score(batch.data(), batch.size()), ErrorCode::InvalidArgument, "image 4");
    CHECK(e.score(nullptr, 0).empty());
    // the engine still works after all that
    CHECK(one(good).size() == 1);
}

TEST_CASE("options: streams, threads, sensitivity, threshold, map output") {
    EngineOptions o = fast();
    o.num_streams = 0;
    REQUIRE_THROWS(Engine(g_engine, o), ErrorCode::InvalidArgument, "num_streams");
    o = fast();
    o.num_threads = -1;
    REQUIRE_THROWS(Engine(g_engine, o), ErrorCode::InvalidArgument, "num_threads");
    o = fast();
    o.frames_per_request = -1;
    REQUIRE_THROWS(Engine(g_engine, o), ErrorCode::InvalidArgument, "frames_per_request");
    o = fast();
    o.frames_per_request = 1000;  // more than max_batch: a request's buffers hold max_batch frames
    REQUIRE_THROWS(Engine(g_engine, o), ErrorCode::InvalidArgument, "max_batch");
    o = fast();
    o.sensitivity = 0.f;
    REQUIRE_THROWS(Engine(g_engine, o), ErrorCode::InvalidArgument, "sensitivity");
    o = fast();
    o.threshold = std::nanf("");
    REQUIRE_THROWS(Engine(g_engine, o), ErrorCode::InvalidArgument, "finite");
    o = fast();
    o.map = static_cast<MapOutput>(9);
    REQUIRE_THROWS(Engine(g_engine, o), ErrorCode::InvalidArgument, "map output");
    o = fast();
    o.device = "cuda:0";
    if (!built_with_tensorrt()) REQUIRE_THROWS(Engine(g_engine, o), ErrorCode::Unsupported, "TensorRT");
    o = fast();
    o.device = "NO_SUCH_DEVICE";
    REQUIRE_THROWS(Engine(g_engine, o), ErrorCode::Backend, "NO_SUCH_DEVICE");
}

TEST_CASE("engine directory: missing, no engine.json, corrupt JSON") {
    REQUIRE_THROWS(Engine(g_scratch + "/does_not_exist", fast()), ErrorCode::NotFound, "does not exist");
    const std::string empty = g_scratch + "/empty_dir";
    std::filesystem::create_directories(empty);
    REQUIRE_THROWS(Engine(empty, fast()), ErrorCode::NotFound, "engine.json");
    const std::string corrupt = variant("corrupt_json", [](variants::Value&) {});
    {
        std::ofstream(corrupt + "/engine.json") << "{\"format\": \"cdd-engine\", \"format_version\": 1,";
    }
    REQUIRE_THROWS(Engine(corrupt, fast()), ErrorCode::EngineFormat, "corrupt");
    {
        std::ofstream(corrupt + "/engine.json") << "[1, 2, 3]";
    }
    REQUIRE_THROWS(Engine(corrupt, fast()), ErrorCode::EngineFormat, "object");
    {
        std::ofstream(corrupt + "/engine.json", std::ios::binary) << "{\"format\": \"cdd-\xff\xfe\"}";
    }
    REQUIRE_THROWS(Engine(corrupt, fast()), ErrorCode::EngineFormat, "UTF-8");
    {
        std::string deep(10000, '[');  // deep nesting must not overflow the stack
        std::ofstream(corrupt + "/engine.json") << deep;
    }
    REQUIRE_THROWS(Engine(corrupt, fast()), ErrorCode::EngineFormat, "nesting");
}

TEST_CASE("engine.json: wrong format, version, missing keys, bad values") {
    using variants::Value;
    // versions 1 and 2 are read; the next one is refused
    REQUIRE_THROWS(Engine(variant("v3", [](Value& m) { m.object["format_version"] = variants::number(3); }), fast()),
                   ErrorCode::EngineFormat, "format_version 3");
    REQUIRE_THROWS(Engine(variant("fmt", [](Value& m) { m.object["format"] = variants::string("onnx"); }), fast()),
                   ErrorCode::EngineFormat, "\"format\"");
    REQUIRE_THROWS(Engine(variant("nothr", [](Value& m) { m.object.erase("threshold"); }), fast()),
                   ErrorCode::EngineFormat, "threshold");
    REQUIRE_THROWS(Engine(variant("mode", [](Value& m) { m.object["anomaly_map"].object["mode"] = variants::string("max"); }),
                          fast()),
                   ErrorCode::EngineFormat, "mode");
    REQUIRE_THROWS(Engine(variant("size", [](Value& m) { m.object["image_size"].array.pop_back(); }), fast()),
                   ErrorCode::EngineFormat, "image_size");
    REQUIRE_THROWS(Engine(variant("std0", [](Value& m) { m.object["input"].object["std"].array[1] = variants::number(0); }),
                          fast()),
                   ErrorCode::EngineFormat, "std");
    REQUIRE_THROWS(Engine(variant("nostudent", [](Value& m) {
                              auto& f = m.object["features"].array;
                              f.erase(std::remove_if(f.begin(), f.end(),
                                                     [](const Value& x) { return x.find("name")->string == "student_1"; }),
                                      f.end());
                          }),
                          fast()),
                   ErrorCode::EngineFormat, "student_1");
    REQUIRE_THROWS(Engine(variant("std_neg", [](Value& m) { m.object["input"].object["std"].array[2].number = -0.2; }),
                          fast()),
                   ErrorCode::EngineFormat, "positive");
    REQUIRE_THROWS(Engine(variant("order", [](Value& m) {
                              auto& f = m.object["features"].array;
                              std::swap(f[0], f[1]);
                          }),
                          fast()),
                   ErrorCode::EngineFormat, "in this order");
    REQUIRE_THROWS(Engine(variant("backend", [](Value& m) { m.object["backend"] = variants::string("onnxruntime"); }),
                          fast()),
                   ErrorCode::EngineFormat, "backend");
    REQUIRE_THROWS(Engine(variant("torch", [](Value& m) {
                              m.object["backend"] = variants::string("torch");
                              m.object["files"].object["model.safetensors"] = m.object["files"].object["model.bin"];
                          }),
                          fast()),
                   ErrorCode::Unsupported, "torch");
    REQUIRE_THROWS(Engine(variant("traversal", [](Value& m) {
                              m.object["files"].object["../model.bin"] = m.object["files"].object["model.bin"];
                          }),
                          fast()),
                   ErrorCode::EngineFormat, "plain relative");
}

TEST_CASE("model files: hash mismatch, size mismatch, missing file, unlisted file, corrupt model") {
    using variants::Value;
    REQUIRE_THROWS(Engine(variant("hash", [](Value& m) {
                              std::string& h = m.object["files"].object["model.bin"].object["sha256"].string;
                              h[0] = h[0] == 'a' ? 'b' : 'a';
                          }),
                          fast()),
                   ErrorCode::EngineFormat, "sha256");
    REQUIRE_THROWS(Engine(variant("bytes", [](Value& m) {
                              m.object["files"].object["model.xml"].object["bytes"].number += 1;
                          }),
                          fast()),
                   ErrorCode::EngineFormat, "truncated");
    REQUIRE_THROWS(Engine(variant("missing", [](Value&) {}, {"model.bin"}), fast()), ErrorCode::NotFound,
                   "missing model file");
    REQUIRE_THROWS(Engine(variant("unlisted", [](Value& m) { m.object["files"].object.erase("model.bin"); }), fast()),
                   ErrorCode::EngineFormat, "model.bin");
    REQUIRE_THROWS(Engine(variant("nomodel", [](Value& m) {
                              m.object["files"].object.erase("model.xml");
                              m.object["files"].object.erase("model.onnx");
                          }),
                          fast()),
                   ErrorCode::EngineFormat, "needs model.onnx");
    // every listed file is checked, also one this backend does not load
    REQUIRE_THROWS(Engine(variant("no_onnx", [](Value&) {}, {"model.onnx"}), fast()), ErrorCode::NotFound,
                   "model.onnx");
    // a replaced model.xml: caught by its hash; with hashes off (size kept equal), OpenVINO's
    // own error comes back wrapped as a cdd::Error
    const std::string bad_xml = variant("bad_xml", [](Value&) {}, {"model.xml"});
    const auto xml_size = std::filesystem::file_size(g_engine + "/model.xml");
    {
        std::ofstream f(bad_xml + "/model.xml", std::ios::binary);
        const std::string junk = "<net>this is not an OpenVINO model</net>";
        f << junk << std::string(xml_size - junk.size(), ' ');
    }
    CHECK(std::filesystem::file_size(bad_xml + "/model.xml") == xml_size);
    REQUIRE_THROWS(Engine(bad_xml, fast()), ErrorCode::EngineFormat, "sha256");
    EngineOptions nohash = fast();
    nohash.verify_hashes = false;
    REQUIRE_THROWS(Engine(bad_xml, nohash), ErrorCode::Backend, "OpenVINO could not load");
}

TEST_CASE("mismatch between engine.json and the model: feature shape, image size; inconsistent feature names") {
    using variants::Value;
    REQUIRE_THROWS(Engine(variant("feat_shape", [](Value& m) {
                              for (auto& f : m.object["features"].array)
                                  if (f.find("name")->string == "teacher_1" || f.find("name")->string == "student_1")
                                      f.object["shape"].array[0].number += 1;
                          }),
                          fast()),
                   ErrorCode::EngineFormat, "teacher_1");
    REQUIRE_THROWS(Engine(variant("img_size", [](Value& m) {
                              m.object["image_size"].array[0].number *= 2;
                              m.object["image_size"].array[1].number *= 2;
                          }),
                          fast()),
                   ErrorCode::EngineFormat, "shape");
    REQUIRE_THROWS(Engine(variant("out_name", [](Value& m) {
                              for (auto& f : m.object["features"].array)
                                  if (f.find("name")->string == "teacher_2") f.object["name"] = variants::string("teacher_9");
                          }),
                          fast()),
                   ErrorCode::EngineFormat, "teacher_2");
}

namespace {
/// engine.json of `dir` with its text edited: `from` (once, must be there) -> `to`.
void rewrite(const std::string& dir, const std::string& from, const std::string& to) {
    std::string text;
    {
        std::ifstream in(dir + "/engine.json", std::ios::binary);
        std::stringstream ss;
        ss << in.rdbuf();
        text = ss.str();
    }
    const auto at = text.find(from);
    CHECK_MSG(at != std::string::npos, "no \"" + from + "\" in engine.json");
    if (at != std::string::npos) text.replace(at, from.size(), to);
    std::ofstream(dir + "/engine.json", std::ios::binary | std::ios::trunc) << text;
}

variants::Value& feature(variants::Value& m, const std::string& name) {
    for (auto& f : m.object["features"].array)
        if (f.find("name")->string == name) return f;
    throw std::runtime_error("no feature " + name);
}
}  // namespace

TEST_CASE("moved-from Engine: every method throws cdd::Error, none dereferences null") {
    Engine a(g_engine, fast());
    Engine b(std::move(a));
    std::vector<std::uint8_t> px(40 * 30 * 3, 77);
    const ImageView v = ImageView::packed(px.data(), 40, 30, PixelFormat::RGB8);
    REQUIRE_THROWS(a.info(), ErrorCode::InvalidArgument, "moved-from");
    REQUIRE_THROWS(a.threshold(), ErrorCode::InvalidArgument, "moved-from");
    REQUIRE_THROWS(a.map_shape(v, MapOutput::ModelSize), ErrorCode::InvalidArgument, "moved-from");
    REQUIRE_THROWS(a.score(v), ErrorCode::InvalidArgument, "moved-from");
    REQUIRE_THROWS(a.score(&v, 1), ErrorCode::InvalidArgument, "moved-from");
    REQUIRE_THROWS(a.score(&v, 1, ScoreOptions{}), ErrorCode::InvalidArgument, "moved-from");
    float score = 0.f;
    REQUIRE_THROWS(a.score_into(&v, 1, ScoreOptions{}, &score, nullptr, nullptr), ErrorCode::InvalidArgument,
                   "moved-from");
    REQUIRE_THROWS(a.score_into(&v, 0, ScoreOptions{}, &score, nullptr, nullptr), ErrorCode::InvalidArgument,
                   "moved-from");
    // the engine moved into b works, and a moved-to Engine works again
    CHECK(b.score(v).map.size() == static_cast<std::size_t>(b.info().image_height) * b.info().image_width);
    a = std::move(b);
    CHECK(a.threshold() > 0.f);
    REQUIRE_THROWS(b.info(), ErrorCode::InvalidArgument, "moved-from");
}

TEST_CASE("engine.json ranges (the rules shared with the Python reader)") {
    using variants::Value;
    struct Case {
        const char* name;
        std::function<void(Value&)> edit;
        const char* fragment;
    };
    auto num = [](double d) { return variants::number(d); };
    const std::vector<Case> cases = {
        // issue 11 item 12: a segfault while loading, an 83 s load, silent score changes
        {"truncate_huge", [&](Value& m) { m.object["anomaly_map"].object["truncate"] = num(1e9); }, "truncate"},
        {"sigma_huge", [&](Value& m) { m.object["anomaly_map"].object["sigma"] = num(1e6); }, "sigma"},
        {"sigma_0", [&](Value& m) { m.object["anomaly_map"].object["sigma"] = num(0); }, "sigma"},
        {"truncate_0", [&](Value& m) { m.object["anomaly_map"].object["truncate"] = num(0); }, "truncate"},
        {"radius_0", [&](Value& m) {  // floor(0.1 * 4 + 0.5) = 0 taps of blur
             m.object["anomaly_map"].object["truncate"] = num(0.1);
         }, "radius"},
        {"eps_big", [&](Value& m) { m.object["anomaly_map"].object["eps"] = num(1e6); }, "eps"},
        {"eps_tiny", [&](Value& m) { m.object["anomaly_map"].object["eps"] = num(1e-13); }, "eps"},
        {"std_huge", [&](Value& m) { m.object["input"].object["std"].array[0] = num(1e300); }, "input.std"},
        {"std_tiny", [&](Value& m) { m.object["input"].object["std"].array[0] = num(1e-300); }, "input.std"},
        {"mean_huge", [&](Value& m) { m.object["input"].object["mean"].array[1] = num(1e4); }, "input.mean"},
        {"thr_neg", [&](Value& m) { m.object["threshold"].object["value"] = num(-0.5); }, "threshold.value"},
        {"batch_0", [&](Value& m) { m.object["max_batch"] = num(0); }, "max_batch"},
        {"batch_big", [&](Value& m) { m.object["max_batch"] = num(4097); }, "max_batch"},
        {"size_0", [&](Value& m) { m.object["image_size"].array = {num(0), num(0)}; }, "image_size"},
        {"size_31", [&](Value& m) { m.object["image_size"].array[1] = num(31); }, "image_size"},
        {"size_big", [&](Value& m) { m.object["image_size"].array[0] = num(4097); }, "image_size"},
        {"feat_h", [&](Value& m) {  // h > H
             const double H = m.object["image_size"].array[0].number;
             feature(m, "teacher_0").object["shape"].array[1] = num(H + 1);
             feature(m, "student_0").object["shape"].array[1] = num(H + 1);
         }, "teacher_0"},
        {"feat_c", [&](Value& m) {
             feature(m, "teacher_2").object["shape"].array[0] = num(65537);
             feature(m, "student_2").object["shape"].array[0] = num(65537);
         }, "teacher_2"},
        {"version_bool", [&](Value& m) {
             Value t;
             t.type = Value::Type::Bool;
             t.boolean = true;
             m.object["format_version"] = t;
         }, "format_version"},
        {"version_frac", [&](Value& m) { m.object["format_version"] = num(1.5); }, "format_version"},
        // a relabelled precision: the IR holds float32 weights only
        {"relabel_fp16", [&](Value& m) { m.object["precision"] = variants::string("fp16"); }, "precision"},
        {"relabel_int8", [&](Value& m) { m.object["precision"] = variants::string("int8"); }, "precision"},
    };
    for (const Case& c : cases) {
        const std::string dir = variant(std::string("range_") + c.name, c.edit);
        REQUIRE_THROWS(Engine(dir, fast()), ErrorCode::EngineFormat, c.fragment);
    }
    // "1.0" and "1e0" are numbers but not JSON integers (the Python reader: float, refused)
    // (the maker's engine has whatever version the package writes: set 1, then spell it 1.0)
    const std::string v10 = variant("version_1_0", [](Value& m) { m.object["format_version"] = variants::number(1); });
    rewrite(v10, "\"format_version\":1", "\"format_version\":1.0");
    REQUIRE_THROWS(Engine(v10, fast()), ErrorCode::EngineFormat, "format_version");
    const std::string b1e0 = variant("batch_1e0", [](Value&) {});
    // the top-level key (after the "input" object), not build.options.max_batch, which sorts first
    rewrite(b1e0, "},\"max_batch\":", "},\"max_batch\":1e0,\"x\":");
    REQUIRE_THROWS(Engine(b1e0, fast()), ErrorCode::EngineFormat, "max_batch");
    // the edges of the ranges load
    const std::string edges = variant("range_edges", [&](Value& m) {
        m.object["anomaly_map"].object["eps"] = num(1e-3);
        m.object["threshold"].object["value"] = num(0);
        m.object["input"].object["std"].array[2] = num(1e-3);
        m.object["input"].object["mean"].array[2] = num(-1000);
    });
    CHECK(Engine(edges, fast()).threshold() == 0.f);
}

TEST_CASE("engine.json text: a UTF-8 BOM is skipped, 64 nested arrays parse and 65 are refused") {
    const std::string bom = variant("bom", [](variants::Value&) {});
    rewrite(bom, "{", "\xEF\xBB\xBF{");
    CHECK(Engine(bom, fast()).info().image_height > 0);
    const std::string deep = variant("deep", [](variants::Value&) {});
    {
        std::ofstream(deep + "/engine.json") << std::string(64, '[') << std::string(64, ']');
    }
    REQUIRE_THROWS(Engine(deep, fast()), ErrorCode::EngineFormat, "top level must be an object");
    {
        std::ofstream(deep + "/engine.json") << std::string(65, '[') << std::string(65, ']');
    }
    REQUIRE_THROWS(Engine(deep, fast()), ErrorCode::EngineFormat, "nesting deeper than 64");
    {
        std::ofstream(deep + "/engine.json") << "{\"a\": 01}";
    }
    REQUIRE_THROWS(Engine(deep, fast()), ErrorCode::EngineFormat, "leading zero");
}

TEST_CASE("files: engine.json and model files must be regular files of bounded size") {
    namespace fs = std::filesystem;
    // engine.json as a FIFO: refused at once (used to block forever)
    const std::string fifo = variant("json_fifo", [](variants::Value&) {});
    fs::remove(fifo + "/engine.json");
    CHECK(::mkfifo((fifo + "/engine.json").c_str(), 0600) == 0);
    REQUIRE_THROWS(Engine(fifo, fast()), ErrorCode::EngineFormat, "regular file");
    // a link to /dev/zero (used to read until memory ran out) and a directory
    const std::string zero = variant("json_zero", [](variants::Value&) {});
    fs::remove(zero + "/engine.json");
    fs::create_symlink("/dev/zero", zero + "/engine.json");
    REQUIRE_THROWS(Engine(zero, fast()), ErrorCode::EngineFormat, "regular file");
    const std::string dir = variant("json_dir", [](variants::Value&) {});
    fs::remove(dir + "/engine.json");
    fs::create_directory(dir + "/engine.json");
    REQUIRE_THROWS(Engine(dir, fast()), ErrorCode::EngineFormat, "regular file");
    // a symlink to a regular engine.json is fine
    const std::string link = variant("json_link", [](variants::Value&) {});
    fs::rename(link + "/engine.json", link + "/real.json");
    fs::create_symlink(fs::absolute(link + "/real.json"), link + "/engine.json");
    CHECK(Engine(link, fast()).info().max_batch > 0);
    // more than 16 MiB (sparse: no disk used) is refused before it is read
    const std::string big = variant("json_big", [](variants::Value&) {});
    fs::resize_file(big + "/engine.json", (16u << 20) + 1);
    REQUIRE_THROWS(Engine(big, fast()), ErrorCode::EngineFormat, "16777216");
    // a model file replaced by a FIFO: refused, hashes on or off, without blocking
    const std::string mfifo = variant("model_fifo", [](variants::Value&) {}, {"model.bin"});
    CHECK(::mkfifo((mfifo + "/model.bin").c_str(), 0600) == 0);
    REQUIRE_THROWS(Engine(mfifo, fast()), ErrorCode::EngineFormat, "not a regular file");
    EngineOptions nohash = fast();
    nohash.verify_hashes = false;
    REQUIRE_THROWS(Engine(mfifo, nohash), ErrorCode::EngineFormat, "not a regular file");
}

TEST_CASE("a diverged model (NaN maps): score throws NonFinite, never a verdict") {
    namespace fs = std::filesystem;
    const std::string dir = variant("nan_model", [](variants::Value&) {}, {"model.bin"});
    fs::copy_file(g_engine + "/model.bin", dir + "/model.bin");
    std::string xml;
    {
        std::ifstream in(g_engine + "/model.xml");
        std::stringstream ss;
        ss << in.rdbuf();
        xml = ss.str();
    }
    // the first float32 constant of the IR (the first convolution's weights) set to 1e38, as a
    // diverged run leaves them: the sums overflow, inf - inf gives NaN maps (the old code scored
    // them -inf: "normal"). A NaN weight itself is no test here: OpenVINO's ReLU maps NaN to 0.
    std::smatch mt;
    const std::regex data_re("<data element_type=\"f32\" shape=\"[^\"]*\" offset=\"([0-9]+)\" size=\"([0-9]+)\"");
    CHECK(std::regex_search(xml, mt, data_re));
    if (mt.empty()) return;
    const std::size_t offset = std::stoull(mt[1].str()), size = std::stoull(mt[2].str());
    {
        std::fstream f(dir + "/model.bin", std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(static_cast<std::streamoff>(offset));
        const float huge = 1e38f;
        for (std::size_t k = 0; k < size / sizeof(float); ++k) f.write(reinterpret_cast<const char*>(&huge), sizeof huge);
    }
    CHECK(static_cast<int>(ErrorCode::NonFinite) == 6);  // the value crosses into Python
    EngineOptions o = fast();
    o.verify_hashes = false;  // the bytes changed, the size did not: as a diverged run would write them
    Engine e(dir, o);
    std::vector<std::uint8_t> px(40 * 30 * 3);
    for (std::size_t i = 0; i < px.size(); ++i) px[i] = static_cast<std::uint8_t>(i * 7);
    std::vector<ImageView> views(3, ImageView::packed(px.data(), 40, 30, PixelFormat::RGB8));
    REQUIRE_THROWS(e.score(views[0]), ErrorCode::NonFinite, "non-finite");
    REQUIRE_THROWS(e.score(views.data(), views.size(), ScoreOptions{MapOutput::None}), ErrorCode::NonFinite,
                   "refusing to give a verdict");
    float scores[3];
    bool flags[3];
    REQUIRE_THROWS(e.score_into(views.data(), 3, ScoreOptions{MapOutput::None}, scores, flags, nullptr),
                   ErrorCode::NonFinite, "diverged model or bad weights");
    EngineOptions features = o;  // the C++ map path (features read out of the network)
    features.distances_in_network = false;
    REQUIRE_THROWS(Engine(dir, features).score(views[0]), ErrorCode::NonFinite, "non-finite");
}

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: test_errors ENGINE_DIR SCRATCH_DIR [filter]\n");
        return 2;
    }
    g_engine = argv[1];
    g_scratch = argv[2];
    std::filesystem::create_directories(g_scratch);
    argv[2] = argv[0];
    return check::run_all(argc - 2, argv + 2);
}
