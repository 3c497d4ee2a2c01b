// engine.json (docs/engine_format.md, format versions 1 and 2): parsed, validated, hashes checked.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cdd/engine.hpp"
#include "cdd/kernels.hpp"

namespace cdd {
namespace detail {

// the engine.json formats this library reads: 1 (openvino, tensorrt, torch; fp32/fp16/int8) and
// 2 (adds backend "aoti" with its "aoti" section, precisions bf16/tf32, the "int8" section)
constexpr int kMinFormatVersion = 1, kFormatVersion = 2;

// Field ranges of engine.json, the same in the Python reader (docs/engine_format.md).
constexpr std::uint64_t kMaxManifestBytes = 16u << 20;  // engine.json itself: 16 MiB
constexpr int kMaxBatch = 4096;
constexpr int kMinImageSide = 32, kMaxImageSide = 4096;
constexpr int kMaxChannels = 65536;
constexpr double kMaxSigma = 64.0, kMaxTruncate = 16.0;

struct FileEntry {
    std::string sha256;
    std::uint64_t bytes = 0;
};

/// The "aoti" section of an aoti engine (format version 2): what model.pt2 was compiled for.
struct AotiSection {
    std::string device;         // "cpu" | "cuda"
    std::string torch_version;  // torch.__version__ of the build, e.g. "2.13.0+cpu"
    int min_batch = 1, max_batch = 0;
    bool channels_last = false, batchnorm_folded = false;
};

struct Manifest {
    std::string dir;  // engine directory, no trailing slash
    int format_version = 0;
    std::string backend, precision;
    int max_batch = 0;
    int image_h = 0, image_w = 0;
    std::string input_name = "image";
    kernels::Normalization norm;
    std::vector<FeatureInfo> teachers, students;  // scale order
    kernels::MapSettings map;
    float threshold = 0.f;
    std::map<std::string, FileEntry> files;
    AotiSection aoti;  // backend "aoti" only

    std::string path(const std::string& file) const { return dir + "/" + file; }
    bool lists(const std::string& file) const { return files.count(file) != 0; }
};

/// Reads and validates ENGINE_DIR/engine.json; throws cdd::Error (NotFound for a missing
/// directory or engine.json, EngineFormat for everything else) naming the key at fault.
Manifest read_manifest(const std::string& engine_dir);

/// Checks that `file` is listed in engine.json, exists, has the listed size and (when
/// `hash`) the listed sha256. NotFound for a missing file, EngineFormat for a mismatch.
void verify_file(const Manifest& m, const std::string& file, bool hash);

/// verify_file() for every file engine.json lists (a reader refuses a directory with any
/// listed file missing, truncated or changed, loaded by this backend or not).
void verify_files(const Manifest& m, bool hash);

}  // namespace detail
}  // namespace cdd
