#include "manifest.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "cdd/error.hpp"
#include "cdd/limits.hpp"
#include "json.hpp"
#include "sha256.hpp"

namespace cdd {
namespace detail {
namespace {

[[noreturn]] void bad(const Manifest& m, const std::string& what) {
    throw Error(ErrorCode::EngineFormat, m.dir + "/engine.json: " + what);
}

const json::Value& need(const Manifest& m, const json::Value& obj, const std::string& key, json::Value::Type type,
                        const std::string& where) {
    const json::Value* v = obj.find(key);
    if (v == nullptr) bad(m, "missing key \"" + where + key + "\"");
    if (v->type != type)
        bad(m, "\"" + where + key + "\" must be a " + json::type_name(type) + ", got a " + json::type_name(v->type));
    return *v;
}

std::string need_string(const Manifest& m, const json::Value& obj, const std::string& key, const std::string& where) {
    return need(m, obj, key, json::Value::Type::String, where).string;
}

std::string json_num(double d) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.17g", d);
    return buf;
}

double need_number(const Manifest& m, const json::Value& obj, const std::string& key, const std::string& where) {
    const double d = need(m, obj, key, json::Value::Type::Number, where).number;
    if (!std::isfinite(d)) bad(m, "\"" + where + key + "\" must be finite");
    return d;
}

/// A JSON integer (written without fraction or exponent; true/false/1.5/1.0 are not) in [lo, hi].
int as_int(const Manifest& m, const json::Value& v, const std::string& what, long long lo, long long hi) {
    if (!v.is_number() || !v.integer || !(v.number >= static_cast<double>(lo)) ||
        !(v.number <= static_cast<double>(hi)))
        bad(m, what + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return static_cast<int>(v.number);
}

std::vector<int> int_list(const Manifest& m, const json::Value& v, std::size_t n, const std::string& what,
                          const std::vector<std::pair<long long, long long>>& ranges) {
    if (!v.is_array() || v.array.size() != n) bad(m, what + " must be a list of " + std::to_string(n) + " integers");
    std::vector<int> out;
    for (std::size_t k = 0; k < n; ++k)
        out.push_back(as_int(m, v.array[k], what + " entry " + std::to_string(k), ranges[k].first, ranges[k].second));
    return out;
}

/// A finite number in [lo, hi] (lo_open: (lo, hi]).
double number_in(const Manifest& m, const json::Value& obj, const std::string& key, const std::string& where,
                 double lo, double hi, bool lo_open = false) {
    const double d = need_number(m, obj, key, where);
    if (lo_open ? !(d > lo) : !(d >= lo)) bad(m, "\"" + where + key + "\" must be " + (lo_open ? "> " : ">= ") +
                                                     json_num(lo) + ", got " + json_num(d));
    if (!(d <= hi)) bad(m, "\"" + where + key + "\" must be <= " + json_num(hi) + ", got " + json_num(d));
    return d;
}

/// engine.json's bytes: a regular file (a symlink to one is fine; FIFOs, devices and
/// directories are refused before they are opened, so nothing blocks or reads forever) of at
/// most kMaxManifestBytes.
std::string read_manifest_text(const Manifest& m) {
    const std::string p = m.path("engine.json");
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0)
        throw Error(ErrorCode::NotFound, "missing " + p + " (an engine directory is written by cdd_engine.build)");
    if (!S_ISREG(st.st_mode)) bad(m, "not a regular file (a FIFO, device or directory is refused)");
    if (static_cast<std::uint64_t>(st.st_size) > kMaxManifestBytes)
        bad(m, std::to_string(st.st_size) + " bytes, more than the " + std::to_string(kMaxManifestBytes) +
                   "-byte limit of an engine manifest");
    // O_NONBLOCK: the file may have been swapped for a FIFO since the stat; fstat checks again
    const int fd = ::open(p.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) bad(m, std::string("cannot open: ") + std::strerror(errno));
    std::string text;
    struct stat fst {};
    bool ok = ::fstat(fd, &fst) == 0 && S_ISREG(fst.st_mode);
    if (ok) {
        text.resize(static_cast<std::size_t>(kMaxManifestBytes) + 1);
        std::size_t got = 0;
        while (got < text.size()) {
            const ssize_t r = ::read(fd, &text[got], text.size() - got);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) {
                ok = false;
                break;
            }
            if (r == 0) break;
            got += static_cast<std::size_t>(r);
        }
        text.resize(got);
    }
    ::close(fd);
    if (!ok) bad(m, "cannot read it as a regular file");
    if (text.size() > kMaxManifestBytes)
        bad(m, "more than the " + std::to_string(kMaxManifestBytes) + "-byte limit of an engine manifest");
    return text;
}

void need_equal(const Manifest& m, const std::string& got, const std::string& want, const std::string& key) {
    if (got != want) bad(m, "\"" + key + "\" is \"" + got + "\"; this library supports only \"" + want + "\"");
}

/// RFC 3629 UTF-8 (no overlongs, no surrogates, at most U+10FFFF).
bool valid_utf8(const std::string& s) {
    std::size_t i = 0;
    while (i < s.size()) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        int n = 0;
        unsigned cp = 0;
        if (c < 0x80) {
            ++i;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            n = 1;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        for (int k = 1; k <= n; ++k) {
            if (i + k >= s.size()) return false;
            const unsigned char d = static_cast<unsigned char>(s[i + k]);
            if ((d & 0xC0) != 0x80) return false;
            cp = cp << 6 | (d & 0x3F);
        }
        static const unsigned min_cp[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += n + 1;
    }
    return true;
}

bool plain_relative(const std::string& name) {
    if (name.empty() || name[0] == '/' || name.find('\\') != std::string::npos) return false;
    std::stringstream ss(name);
    std::string part;
    while (std::getline(ss, part, '/'))
        if (part.empty() || part == "." || part == "..") return false;
    return true;
}

/// The optional top-level "int8" section (docs/engine_format.md), the rules of engine_format.py:
/// {tool: a non-empty string, calibration: an object, guard: {passed: true/false, thresholds: an
/// object, spearman: null or in [-1, 1], map_rel_error_mean/max: null or finite}}. An int8 engine
/// whose guard failed is refused, and so is a passed guard in an engine of another precision.
void check_int8_section(const Manifest& m, const json::Value& root) {
    const json::Value* sec = root.find("int8");
    if (sec == nullptr) return;
    if (!sec->is_object()) bad(m, "'int8' must be an object {tool, calibration, guard}");
    const json::Value* tool = sec->find("tool");
    if (tool == nullptr || !tool->is_string() || tool->string.empty()) bad(m, "int8.tool must be a non-empty string");
    const json::Value* cal = sec->find("calibration");
    if (cal == nullptr || !cal->is_object()) bad(m, "int8.calibration must be an object");
    const json::Value* guard = sec->find("guard");
    const json::Value* passed = guard != nullptr ? guard->find("passed") : nullptr;
    const json::Value* thresholds = guard != nullptr ? guard->find("thresholds") : nullptr;
    if (guard == nullptr || !guard->is_object() || passed == nullptr || !passed->is_bool() || thresholds == nullptr ||
        !thresholds->is_object())
        bad(m, "int8.guard must be an object with 'passed' (true/false) and 'thresholds'");
    for (const char* key : {"map_rel_error_mean", "map_rel_error_max"}) {
        const json::Value* v = guard->find(key);
        if (v != nullptr && !v->is_null() && !(v->is_number() && std::isfinite(v->number)))
            bad(m, std::string("int8.guard.") + key + " must be a finite number or null");
    }
    const json::Value* rho = guard->find("spearman");
    if (rho != nullptr && !rho->is_null() && !(rho->is_number() && rho->number >= -1.0 && rho->number <= 1.0))
        bad(m, "int8.guard.spearman must be null or a number in [-1, 1]");
    if (m.precision == "int8" && !passed->boolean)
        bad(m, "precision is 'int8' but int8.guard.passed is false (an INT8 engine that failed its accuracy guard); "
               "rebuild the engine");
    if (m.precision != "int8" && passed->boolean)
        bad(m, "an 'int8' section whose guard passed belongs to an int8 engine, but precision is '" + m.precision +
               "'");
}

}  // namespace

Manifest read_manifest(const std::string& engine_dir) {
    Manifest m;
    m.dir = engine_dir;
    while (m.dir.size() > 1 && m.dir.back() == '/') m.dir.pop_back();
    struct stat st {};
    if (engine_dir.empty() || ::stat(m.dir.c_str(), &st) != 0)
        throw Error(ErrorCode::NotFound, "engine directory does not exist: \"" + engine_dir + "\"");
    if (!S_ISDIR(st.st_mode)) throw Error(ErrorCode::NotFound, "not an engine directory: " + engine_dir);
    std::string text = read_manifest_text(m);
    if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);  // a UTF-8 BOM (editors write one)
    json::Value root;
    if (!valid_utf8(text)) bad(m, "corrupt file: not UTF-8 text");
    try {
        root = json::parse(text);
    } catch (const std::exception& e) {
        bad(m, std::string("corrupt file: ") + e.what());
    }
    if (!root.is_object()) bad(m, "the top level must be an object");

    if (need_string(m, root, "format", "") != "cdd-engine") bad(m, "\"format\" must be \"cdd-engine\"");
    {
        const json::Value& fv = need(m, root, "format_version", json::Value::Type::Number, "");
        if (!fv.integer || !std::isfinite(fv.number))
            bad(m, "\"format_version\" must be an integer (" + std::to_string(kFormatVersion) + "), got " +
                       json_num(fv.number));
        if (fv.number != kFormatVersion)
            bad(m, "format_version " + json_num(fv.number) + " is not supported by this library (it reads " +
                       std::to_string(kFormatVersion) + "); rebuild the engine with the matching cdd_engine version");
        m.format_version = kFormatVersion;
    }
    m.backend = need_string(m, root, "backend", "");
    if (m.backend != "openvino" && m.backend != "tensorrt" && m.backend != "torch")
        bad(m, "\"backend\" must be openvino, tensorrt or torch, got \"" + m.backend + "\"");
    m.precision = need_string(m, root, "precision", "");
    if (m.precision != "fp32" && m.precision != "fp16" && m.precision != "int8")
        bad(m, "\"precision\" must be fp32, fp16 or int8, got \"" + m.precision + "\"");
    m.max_batch = as_int(m, need(m, root, "max_batch", json::Value::Type::Number, ""), "\"max_batch\"", 1, kMaxBatch);
    const auto size = int_list(m, need(m, root, "image_size", json::Value::Type::Array, ""), 2, "\"image_size\"",
                               {{kMinImageSide, kMaxImageSide}, {kMinImageSide, kMaxImageSide}});
    m.image_h = size[0];
    m.image_w = size[1];

    const json::Value& input = need(m, root, "input", json::Value::Type::Object, "");
    m.input_name = need_string(m, input, "name", "input.");
    need_equal(m, need_string(m, input, "layout", "input."), "NCHW", "input.layout");
    need_equal(m, need_string(m, input, "dtype", "input."), "float32", "input.dtype");
    need_equal(m, need_string(m, input, "color", "input."), "RGB", "input.color");
    need_equal(m, need_string(m, input, "resize", "input."), "bilinear_antialias", "input.resize");
    for (const char* key : {"mean", "std"}) {
        const json::Value& v = need(m, input, key, json::Value::Type::Array, "input.");
        if (v.array.size() != 3) bad(m, std::string("\"input.") + key + "\" must hold 3 numbers (R, G, B)");
        const bool is_mean = std::string(key) == "mean";
        const double lo = is_mean ? -1000.0 : 1e-3, hi = 1000.0;
        for (int c = 0; c < 3; ++c) {
            if (!v.array[c].is_number() || !std::isfinite(v.array[c].number))
                bad(m, std::string("\"input.") + key + "\" must hold finite numbers");
            const double d = v.array[c].number;
            if (!(d >= lo && d <= hi))
                bad(m, std::string("\"input.") + key + "\" entries must be in [" + json_num(lo) + ", " + json_num(hi) +
                           "]" + (is_mean ? "" : " (positive)") + ", got " + json_num(d));
            (is_mean ? m.norm.mean : m.norm.std)[c] = static_cast<float>(d);
        }
    }

    // the six feature names in this order (docs/engine_format.md)
    static const char* kNames[6] = {"teacher_0", "teacher_1", "teacher_2", "student_0", "student_1", "student_2"};
    const json::Value& feats = need(m, root, "features", json::Value::Type::Array, "");
    std::vector<FeatureInfo> all;
    for (const auto& f : feats.array) {
        if (!f.is_object()) bad(m, "\"features\" entries must be objects");
        FeatureInfo fi;
        fi.name = need_string(m, f, "name", "features[].");
        const auto shape = int_list(m, need(m, f, "shape", json::Value::Type::Array, "features[]."), 3,
                                    "shape of feature " + fi.name + " [C, h, w]",
                                    {{1, kMaxChannels}, {1, m.image_h}, {1, m.image_w}});
        fi.channels = shape[0];
        fi.height = shape[1];
        fi.width = shape[2];
        fi.dtype = need_string(m, f, "dtype", "features[].");
        if (fi.dtype != "float32" && fi.dtype != "float16")
            bad(m, "feature " + fi.name + ": dtype must be float32 or float16, got \"" + fi.dtype + "\"");
        all.push_back(fi);
    }
    bool names_ok = all.size() == 6;
    for (std::size_t k = 0; names_ok && k < 6; ++k) names_ok = all[k].name == kNames[k];
    if (!names_ok) {
        std::string got;
        for (const auto& f : all) got += (got.empty() ? "" : ", ") + f.name;
        bad(m, "\"features\" must be teacher_0, teacher_1, teacher_2, student_0, student_1, student_2 in this "
               "order, got [" + got + "]");
    }
    for (int s = 0; s < 3; ++s) {
        const FeatureInfo &t = all[s], &u = all[s + 3];
        if (t.channels != u.channels || t.height != u.height || t.width != u.width || t.dtype != u.dtype)
            bad(m, "features: " + t.name + " and " + u.name + " must have the same shape and dtype");
        m.teachers.push_back(t);
        m.students.push_back(u);
    }

    const json::Value& am = need(m, root, "anomaly_map", json::Value::Type::Object, "");
    const std::string mode = need_string(m, am, "mode", "anomaly_map.");
    if (mode != "add" && mode != "mul") bad(m, "\"anomaly_map.mode\" must be add or mul, got \"" + mode + "\"");
    m.map.mode = mode == "add" ? kernels::MapMode::Add : kernels::MapMode::Mul;
    m.map.sigma = number_in(m, am, "sigma", "anomaly_map.", 0.0, kMaxSigma, true);
    m.map.truncate = number_in(m, am, "truncate", "anomaly_map.", 0.0, kMaxTruncate, true);
    m.map.eps = number_in(m, am, "eps", "anomaly_map.", 1e-12, 1e-3);
    {
        const double r = std::floor(m.map.truncate * m.map.sigma + 0.5);
        if (!(r >= 1 && r <= limits::kMaxBlurRadius))
            bad(m, "anomaly_map blur radius floor(truncate * sigma + 0.5) = " + json_num(r) + " must be in [1, " +
                       std::to_string(limits::kMaxBlurRadius) + "] (MAX_BLUR_RADIUS)");
    }
    need_equal(m, need_string(m, am, "upsample", "anomaly_map."), "bilinear_align_corners", "anomaly_map.upsample");
    need_equal(m, need_string(m, am, "blur_boundary", "anomaly_map."), "reflect", "anomaly_map.blur_boundary");

    const json::Value& thr = need(m, root, "threshold", json::Value::Type::Object, "");
    // scores are sums of cosine distances: a negative threshold would flag every frame
    m.threshold = static_cast<float>(number_in(m, thr, "value", "threshold.", 0.0, std::numeric_limits<double>::max()));

    check_int8_section(m, root);

    const json::Value& files = need(m, root, "files", json::Value::Type::Object, "");
    for (const auto& kv : files.object) {
        if (!plain_relative(kv.first)) bad(m, "\"files\": \"" + kv.first + "\" is not a plain relative file name");
        if (!kv.second.is_object()) bad(m, "\"files." + kv.first + "\" must be an object");
        FileEntry fe;
        fe.sha256 = need_string(m, kv.second, "sha256", "files." + kv.first + ".");
        if (fe.sha256.size() != 64 || fe.sha256.find_first_not_of("0123456789abcdef") != std::string::npos)
            bad(m, "\"files." + kv.first + ".sha256\" must be 64 lower-case hex digits");
        const json::Value& bytes = need(m, kv.second, "bytes", json::Value::Type::Number, "files." + kv.first + ".");
        if (!bytes.integer || !(bytes.number >= 0) || !(bytes.number <= 9.007199254740992e15))
            bad(m, "\"files." + kv.first + ".bytes\" must be a non-negative integer");
        fe.bytes = static_cast<std::uint64_t>(bytes.number);
        m.files[kv.first] = fe;
    }
    static const std::map<std::string, std::vector<std::string>> kBackendFiles = {
        {"openvino", {"model.onnx", "model.xml", "model.bin"}},
        {"tensorrt", {"model.onnx", "model.plan"}},
        {"torch", {"model.safetensors"}}};
    for (const std::string& f : kBackendFiles.at(m.backend))
        if (!m.lists(f)) bad(m, "backend " + m.backend + " needs " + f + " listed in \"files\"");
    return m;
}

void verify_files(const Manifest& m, bool hash) {
    for (const auto& kv : m.files) verify_file(m, kv.first, hash);
}

void verify_file(const Manifest& m, const std::string& file, bool hash) {
    auto it = m.files.find(file);
    if (it == m.files.end()) bad(m, "\"files\" lists no sha256 for " + file + ", so it cannot be trusted");
    const std::string p = m.path(file);
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0)
        throw Error(ErrorCode::NotFound, "missing model file " + p + " (listed in engine.json)");
    if (!S_ISREG(st.st_mode))  // a FIFO would block a reader, a device read forever
        throw Error(ErrorCode::EngineFormat, p + " (listed in engine.json) is not a regular file");
    if (static_cast<std::uint64_t>(st.st_size) != it->second.bytes)
        throw Error(ErrorCode::EngineFormat, p + " has " + std::to_string(st.st_size) + " bytes, engine.json says " +
                                                 std::to_string(it->second.bytes) + ": truncated or replaced file");
    if (!hash) return;
    std::uint64_t read_bytes = 0;
    const std::string got = file_sha256(p, &read_bytes, it->second.bytes);
    if (read_bytes != it->second.bytes)
        throw Error(ErrorCode::EngineFormat, p + " has " + std::to_string(read_bytes) + " bytes, engine.json says " +
                                                 std::to_string(it->second.bytes) + ": truncated or replaced file");
    if (got != it->second.sha256)
        throw Error(ErrorCode::EngineFormat, p + ": sha256 " + got + " does not match engine.json (" +
                                                 it->second.sha256 + "): corrupt or replaced file");
}

}  // namespace detail
}  // namespace cdd
