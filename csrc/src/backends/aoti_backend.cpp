// AOTInductor backend (CDD_WITH_AOTI): model.pt2, an AOTInductor package written by
// torch._inductor.aoti_compile_and_package, run through libtorch's package loader
// (torch::inductor::AOTIModelPackageLoader) with our own pre-processing and anomaly map around it.
//
// - The package is tied to the torch build that compiled it (its generated code calls that
//   libtorch's C shim) and to a device kind: engine.json's "aoti" section says which, and a
//   package whose torch_version differs from the libtorch this library was built against
//   (CDD_TORCH_VERSION, the full torch.__version__, e.g. "2.13.0+cpu"), or whose device is not
//   the requested one, is refused before it is opened, with the advice to rebuild. The
//   package's own metadata (AOTI_DEVICE_KEY, AOTI_CPU_ISA) is checked too: a relabelled
//   engine.json, or a CPU package compiled for an instruction set this CPU lacks (it would die
//   of SIGILL), gives a cdd::Error.
// - One loader per engine with num_runners = num_streams: its model container holds that many
//   model instances sharing one copy of the weights and hands each concurrent run() its own
//   instance (thread-safe; the engine's pool never runs more than num_streams at once).
// - CPU: frames -> our antialiased pre-processing straight into the worker's input buffer,
//   wrapped as a tensor (at::from_blob, no copy) -> the package -> six float32 features read
//   in place by the fused C++ anomaly map. The generated kernels parallelise with OpenMP
//   (#pragma omp parallel, no fixed count), so the calling thread's OpenMP thread count is set
//   to num_threads for the call and restored after it.
// - CUDA (package device "cuda", EngineOptions::device "cuda[:N]", a build with CDD_WITH_CUDA):
//   NOT RUN ON THE DEVELOPMENT MACHINES (no GPU). Written against the documented loader API
//   (run(inputs, stream_handle): the stream is a cudaStream_t, the same handle as our CUstream)
//   with the TensorRT backend's pieces: the Triton AOT pre-processing kernel writes the
//   normalised batch into a device buffer wrapped as a CUDA tensor, the package runs on the
//   worker's stream, and the fused GPU anomaly map reads its outputs in place and copies maps
//   and scores to pinned memory; without embedded kernels the CPU kernels run around
//   host <-> device copies on the same stream.
//
// Every exception the loader or libtorch throws (c10::Error, std::exception) becomes a
// cdd::Error naming the file: a corrupt model.pt2 is an error, never a crash. The package's zip
// CRCs are checked first (libtorch's extraction does not check them).
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <dlfcn.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <sys/types.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "../backend.hpp"
#include "../parallel.hpp"
#include "cdd/error.hpp"
#include "cdd/kernels.hpp"

#ifdef CDD_WITH_CUDA
#include "../cuda/driver.hpp"
#include "../cuda/gpu_kernels.hpp"
#endif

#ifndef CDD_TORCH_VERSION
#error "CDD_TORCH_VERSION (the full torch.__version__ of the libtorch linked) must be defined by the build"
#endif

namespace cdd {

const char* aoti_torch_version() noexcept { return CDD_TORCH_VERSION; }

namespace detail {
namespace {

bool trace() {
    static const bool on = [] {
        const char* v = std::getenv("CDD_TRACE");
        return v != nullptr && v[0] == '1';
    }();
    return on;
}

/// "what: message" of an exception from libtorch, its first line only (c10::Error appends a
/// C++ backtrace that says nothing to a user).
std::string torch_message(const std::exception& e) {
    const c10::Error* ce = dynamic_cast<const c10::Error*>(&e);
    std::string msg = ce != nullptr ? ce->what_without_backtrace() : e.what();
    const auto nl = msg.find('\n');
    if (nl != std::string::npos) msg.resize(nl);
    return msg;
}

/// The OpenMP thread count of the calling thread set for a scope and restored after it. The
/// OpenMP runtime is the one libtorch loaded (libgomp, or Intel's for some builds): its entry
/// points are looked up at run time, so nothing links an OpenMP library of its own.
class OmpThreads {
public:
    explicit OmpThreads(int n) {
        static const auto fns = [] {
            using Get = int (*)();
            using Set = void (*)(int);
            return std::make_pair(reinterpret_cast<Get>(::dlsym(RTLD_DEFAULT, "omp_get_max_threads")),
                                  reinterpret_cast<Set>(::dlsym(RTLD_DEFAULT, "omp_set_num_threads")));
        }();
        if (fns.first == nullptr || fns.second == nullptr || n < 1) return;
        set_ = fns.second;
        prev_ = fns.first();
        if (prev_ != n) set_(n);
    }
    ~OmpThreads() {
        if (set_ != nullptr && prev_ > 0) set_(prev_);
    }
    OmpThreads(const OmpThreads&) = delete;
    OmpThreads& operator=(const OmpThreads&) = delete;

private:
    void (*set_)(int) = nullptr;
    int prev_ = 0;
};

/// Refuses a CPU package compiled for an instruction set this CPU lacks (AOTI_CPU_ISA lists
/// what Inductor compiled for: "AVX2", "AVX512", "AVX512 AVX512_VNNI", "... AMX_TILE"); running
/// it would raise SIGILL. Necessary, not sufficient: Inductor also passes -march=native, so a
/// package belongs on the machine class it was built on (docs/cpp_api.md).
void check_cpu_isa(const Manifest& m, const std::string& isa) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    auto amx_tile = [] {  // CPUID.(EAX=7, ECX=0):EDX bit 24
        unsigned a = 0, b = 0, c = 0, d = 0;
        return __get_cpuid_count(7, 0, &a, &b, &c, &d) != 0 && (d >> 24 & 1u) != 0;
    };
    std::istringstream in(isa);
    std::string tok;
    while (in >> tok) {
        bool ok = true;
        if (tok == "AVX2")
            ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        else if (tok == "AVX512")  // Inductor's AVX512 = -mavx512f -mavx512dq -mavx512vl -mavx512bw
            ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
        else if (tok == "AVX512_VNNI")
            ok = __builtin_cpu_supports("avx512vnni");
        else if (tok == "AMX_TILE")
            ok = amx_tile();
        if (!ok)
            throw Error(ErrorCode::Unsupported,
                        m.path("model.pt2") + " was compiled for " + tok + " (AOTI_CPU_ISA \"" + isa +
                            "\"), which this CPU does not have: rebuild the engine on this machine "
                            "(cdd_engine.build(run_dir, backend=\"aoti\", device=\"cpu\"))");
    }
#else
    (void)m;
    (void)isa;
#endif
}

// ---------------------------------------------------------------- the package's zip CRCs
// libtorch's loader extracts the package with CRC checks compiled out (its miniz is built with
// MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS: a package with 64 flipped bytes inside its .so loaded and
// ran here), then dlopens the .so: damaged bytes could crash the process there. So every member
// is checked against its CRC-32 first, as the Python backend does with zipfile.testzip(). torch
// writes members uncompressed (stored); a compressed member is bounds-checked only. Cost: a
// 256 MiB package was checked (and refused by the loader) in 0.42 s here, once per load.

/// CRC-32 (zip's polynomial 0xEDB88320) of n bytes, continuing `crc`; slicing-by-4.
std::uint32_t crc32_update(std::uint32_t crc, const unsigned char* p, std::size_t n) {
    static const auto tables = [] {
        std::vector<std::uint32_t> t(4 * 256);
        for (std::uint32_t i = 0; i < 256; ++i) {
            std::uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        for (std::uint32_t i = 0; i < 256; ++i)
            for (int s = 1; s < 4; ++s) t[s * 256 + i] = (t[(s - 1) * 256 + i] >> 8) ^ t[t[(s - 1) * 256 + i] & 0xFF];
        return t;
    }();
    const std::uint32_t* t = tables.data();
    crc = ~crc;
    while (n >= 4) {
        crc ^= static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
               static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
        crc = t[3 * 256 + (crc & 0xFF)] ^ t[2 * 256 + ((crc >> 8) & 0xFF)] ^ t[256 + ((crc >> 16) & 0xFF)] ^
              t[crc >> 24];
        p += 4;
        n -= 4;
    }
    while (n--) crc = t[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

class ZipFile {
public:
    explicit ZipFile(const std::string& path) : path_(path), f_(std::fopen(path.c_str(), "rb")) {
        if (f_ == nullptr) fail("cannot open it");
        if (::fseeko(f_, 0, SEEK_END) != 0) fail("cannot seek");
        size_ = static_cast<std::uint64_t>(::ftello(f_));
    }
    ~ZipFile() {
        if (f_ != nullptr) std::fclose(f_);
    }
    ZipFile(const ZipFile&) = delete;
    ZipFile& operator=(const ZipFile&) = delete;

    [[noreturn]] void fail(const std::string& why) const {
        throw Error(ErrorCode::EngineFormat,
                    path_ + ": not a readable AOTInductor package (" + why + "); rebuild the engine");
    }

    /// n bytes at `off`, refused when they lie outside the file.
    std::vector<unsigned char> read(std::uint64_t off, std::uint64_t n) const {
        if (off > size_ || n > size_ - off) fail("a record points outside the file");
        std::vector<unsigned char> b(static_cast<std::size_t>(n));
        if (::fseeko(f_, static_cast<off_t>(off), SEEK_SET) != 0 || (n > 0 && std::fread(b.data(), 1, b.size(), f_) != b.size()))
            fail("read error");
        return b;
    }

    /// CRC-32 of n bytes at `off`, read in 1 MiB pieces.
    std::uint32_t crc(std::uint64_t off, std::uint64_t n) const {
        if (off > size_ || n > size_ - off) fail("a member extends past the end of the file");
        if (::fseeko(f_, static_cast<off_t>(off), SEEK_SET) != 0) fail("cannot seek");
        std::vector<unsigned char> buf(1 << 20);
        std::uint32_t c = 0;
        while (n > 0) {
            const std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(n, buf.size()));
            if (std::fread(buf.data(), 1, k, f_) != k) fail("read error");
            c = crc32_update(c, buf.data(), k);
            n -= k;
        }
        return c;
    }

    /// Checks every member; returns how many were CRC-checked (stored ones).
    std::size_t check() const {
        // end of central directory: the last 22 bytes + at most a 64 KiB comment
        const std::uint64_t tail_n = std::min<std::uint64_t>(size_, 22 + 0xFFFF);
        if (tail_n < 22) fail("too short for a zip archive");
        const std::vector<unsigned char> tail = read(size_ - tail_n, tail_n);
        std::size_t eocd = std::string::npos;
        for (std::size_t i = tail.size() - 22 + 1; i-- > 0;)
            if (u32(tail, i) == 0x06054b50u && i + 22 + u16(tail, i + 20) == tail.size()) {
                eocd = i;
                break;
            }
        if (eocd == std::string::npos) fail("no end-of-central-directory record");
        std::uint64_t entries = u16(tail, eocd + 10), cd_size = u32(tail, eocd + 12), cd_off = u32(tail, eocd + 16);
        const std::uint64_t eocd_abs = size_ - tail_n + eocd;
        if (eocd_abs >= 20) {  // zip64 locator just before it: the 64-bit record holds the real numbers
            const std::vector<unsigned char> loc = read(eocd_abs - 20, 20);
            if (u32(loc, 0) == 0x07064b50u) {
                const std::vector<unsigned char> z = read(u64(loc, 8), 56);
                if (u32(z, 0) != 0x06064b50u) fail("bad zip64 end-of-central-directory record");
                entries = u64(z, 32);
                cd_size = u64(z, 40);
                cd_off = u64(z, 48);
            }
        }
        constexpr std::uint64_t kMaxCentralDirectory = 64u << 20;  // ~500k members: far beyond any package
        if (cd_size > kMaxCentralDirectory) fail("central directory too large");
        const std::vector<unsigned char> cd = read(cd_off, cd_size);
        std::size_t pos = 0, checked = 0;
        for (std::uint64_t e = 0; e < entries; ++e) {
            if (pos + 46 > cd.size() || u32(cd, pos) != 0x02014b50u) fail("corrupt central directory");
            const unsigned method = u16(cd, pos + 10);
            const std::uint32_t want_crc = u32(cd, pos + 16);
            std::uint64_t csize = u32(cd, pos + 20), usize = u32(cd, pos + 24), local = u32(cd, pos + 42);
            const std::size_t name_n = u16(cd, pos + 28), extra_n = u16(cd, pos + 30), comment_n = u16(cd, pos + 32);
            if (pos + 46 + name_n + extra_n + comment_n > cd.size()) fail("corrupt central directory");
            const std::string name(cd.begin() + pos + 46, cd.begin() + pos + 46 + name_n);
            // zip64 extra field (tag 1): the 64-bit values of the fields saturated above, in order
            for (std::size_t x = pos + 46 + name_n, end = x + extra_n; x + 4 <= end;) {
                const unsigned tag = u16(cd, x), n = u16(cd, x + 2);
                if (x + 4 + n > end) fail("corrupt extra field of " + name);
                if (tag == 1) {
                    std::size_t v = x + 4;
                    for (std::uint64_t* f : {&usize, &csize, &local})
                        if (*f == 0xFFFFFFFFu) {
                            if (v + 8 > x + 4 + n) fail("corrupt zip64 field of " + name);
                            *f = u64(cd, v);
                            v += 8;
                        }
                }
                x += 4 + n;
            }
            const std::vector<unsigned char> lh = read(local, 30);
            if (u32(lh, 0) != 0x04034b50u) fail("bad local header of " + name);
            const std::uint64_t data = local + 30 + u16(lh, 26) + u16(lh, 28);
            if (method == 0) {
                if (csize != usize) fail("stored member " + name + " has two sizes");
                if (name.size() > 3 && name.compare(name.size() - 3, 3, ".so") == 0) check_elf(name, data, csize);
                if (crc(data, csize) != want_crc)
                    throw Error(ErrorCode::EngineFormat, path_ + ": member " + name +
                                                             " of the AOTInductor package is corrupt (CRC mismatch); "
                                                             "rebuild the engine");
                ++checked;
            } else if (data > size_ || csize > size_ - data) {
                fail("member " + name + " extends past the end of the file");
            }
            pos += 46 + name_n + extra_n + comment_n;
        }
        if (entries == 0) fail("no members");
        return checked;
    }

private:
    /// A stored .so must be a 64-bit little-endian ELF for this machine: checked here because
    /// libtorch leaves its extraction directory behind when dlopen then fails.
    void check_elf(const std::string& name, std::uint64_t data, std::uint64_t n) const {
#if defined(__x86_64__)
        constexpr unsigned kMachine = 62;  // EM_X86_64
#elif defined(__aarch64__)
        constexpr unsigned kMachine = 183;  // EM_AARCH64
#else
        constexpr unsigned kMachine = 0;  // not checked
#endif
        const std::vector<unsigned char> h = read(data, std::min<std::uint64_t>(n, 20));
        const bool elf = h.size() == 20 && h[0] == 0x7F && h[1] == 'E' && h[2] == 'L' && h[3] == 'F' && h[4] == 2 &&
                         h[5] == 1;
        if (!elf)
            throw Error(ErrorCode::EngineFormat, path_ + ": member " + name +
                                                     " is not a 64-bit little-endian shared object; corrupt package, "
                                                     "rebuild the engine");
        if (kMachine != 0 && u16(h, 18) != kMachine)
            throw Error(ErrorCode::EngineFormat, path_ + ": member " + name + " was compiled for another machine "
                                                     "architecture (ELF machine " + std::to_string(u16(h, 18)) +
                                                     "); rebuild the engine on this machine");
    }

    static unsigned u16(const std::vector<unsigned char>& b, std::size_t i) {
        return static_cast<unsigned>(b[i]) | static_cast<unsigned>(b[i + 1]) << 8;
    }
    static std::uint32_t u32(const std::vector<unsigned char>& b, std::size_t i) {
        return static_cast<std::uint32_t>(u16(b, i)) | static_cast<std::uint32_t>(u16(b, i + 2)) << 16;
    }
    static std::uint64_t u64(const std::vector<unsigned char>& b, std::size_t i) {
        return static_cast<std::uint64_t>(u32(b, i)) | static_cast<std::uint64_t>(u32(b, i + 4)) << 32;
    }
    std::string path_;
    std::FILE* f_ = nullptr;
    std::uint64_t size_ = 0;
};

int cuda_ordinal(const std::string& device) {
    const auto colon = device.find(':');
    if (colon == std::string::npos) return 0;
    try {
        std::size_t used = 0;
        const int n = std::stoi(device.substr(colon + 1), &used);
        if (used == device.size() - colon - 1 && n >= 0) return n;
    } catch (const std::exception&) {
    }
    throw Error(ErrorCode::InvalidArgument, "device must be \"cuda\" or \"cuda:N\", got \"" + device + "\"");
}

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

/// What every worker shares: the loader (its container holds num_streams model instances).
struct Shared {
    std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
    std::string file;  // model.pt2's path, for messages
    bool cuda = false;
    int ordinal = 0;
    int H = 0, W = 0, max_batch = 0, threads = 1;
    kernels::Normalization norm;
    kernels::MapSettings map;
    kernels::AnomalyMap amap;
    std::vector<FeatureInfo> features;  // per scale (teacher == student geometry)
#ifdef CDD_WITH_CUDA
    std::unique_ptr<cuda::Context> ctx;
    std::unique_ptr<cuda::KernelSet> kernels;
    int sm_count = 1;
#endif
    explicit Shared(kernels::AnomalyMap a) : amap(std::move(a)) {}
    ~Shared() {
#ifdef CDD_WITH_CUDA
        if (ctx) ctx->make_current();
        kernels.reset();
#endif
        loader.reset();
    }

    /// The package's six outputs for the (n, 3, H, W) input, checked against engine.json.
    std::vector<at::Tensor> run(const at::Tensor& input, std::size_t n, void* stream) const {
        std::vector<at::Tensor> out;
        try {
            out = loader->run(std::vector<at::Tensor>{input}, stream);
        } catch (const std::exception& e) {
            throw Error(ErrorCode::Backend, "AOTInductor run of " + file + " failed: " + torch_message(e));
        }
        if (out.size() != 2 * features.size())
            throw Error(ErrorCode::EngineFormat, file + " returned " + std::to_string(out.size()) +
                                                     " outputs; engine.json lists 6 (teacher_0..2, student_0..2)");
        for (std::size_t k = 0; k < out.size(); ++k) {
            const FeatureInfo& f = features[k % features.size()];
            const at::Tensor& t = out[k];
            const bool shape_ok = t.dim() == 4 && t.size(0) == static_cast<std::int64_t>(n) &&
                                  t.size(1) == f.channels && t.size(2) == f.height && t.size(3) == f.width;
            if (!shape_ok || t.scalar_type() != at::kFloat || t.is_cuda() != cuda) {
                std::ostringstream os;
                os << file << ": output " << k << " is " << t.sizes() << " " << t.scalar_type() << " on " << t.device()
                   << "; engine.json says float32 (" << n << ", " << f.channels << ", " << f.height << ", " << f.width
                   << ") on " << (cuda ? "cuda" : "cpu");
                throw Error(ErrorCode::EngineFormat, os.str());
            }
        }
        return out;
    }
};

class AotiCpuWorker final : public Worker {
public:
    explicit AotiCpuWorker(std::shared_ptr<Shared> sh)
        : sh_(std::move(sh)),
          input_(static_cast<std::size_t>(sh_->max_batch) * 3 * sh_->H * sh_->W),
          maps_(static_cast<std::size_t>(sh_->max_batch) * sh_->H * sh_->W) {}

    void run(const ImageView* views, std::size_t n, float* scores) override {
        Shared& sh = *sh_;
        const auto t0 = std::chrono::steady_clock::now();
        const std::size_t plane = static_cast<std::size_t>(3) * sh.H * sh.W;
        const int outer = static_cast<int>(std::min<std::size_t>(n, sh.threads));
        const int inner = std::max(1, sh.threads / outer);
        parallel_for(n, outer, [&](std::size_t b, std::size_t e) {
            for (std::size_t i = b; i < e; ++i)
                kernels::preprocess(views[i], sh.H, sh.W, sh.norm, input_.data() + i * plane, inner);
        });
        const auto t1 = std::chrono::steady_clock::now();
        std::vector<at::Tensor> out;
        std::vector<kernels::FeaturePair> levels(sh.features.size());
        try {
            const at::Tensor x = at::from_blob(input_.data(), {static_cast<std::int64_t>(n), 3, sh.H, sh.W},
                                               at::TensorOptions().dtype(at::kFloat));
            {
                OmpThreads omp(sh.threads);
                out = sh.run(x, n, nullptr);
            }
            // channels-last packages may return channels-last features: the map reads (C, h, w) rows
            for (at::Tensor& t : out)
                if (!t.is_contiguous()) t = t.contiguous();
        } catch (const Error&) {
            throw;
        } catch (const std::exception& e) {
            throw Error(ErrorCode::Backend, "AOTInductor run of " + sh.file + " failed: " + torch_message(e));
        }
        const auto t2 = std::chrono::steady_clock::now();
        for (std::size_t s = 0; s < levels.size(); ++s) {
            const FeatureInfo& f = sh.features[s];
            levels[s] = {out[s].data_ptr(), out[s + levels.size()].data_ptr(), kernels::DType::Float32, f.channels,
                         f.height, f.width};
        }
        sh.amap.run_batch(levels.data(), n, maps_.data(), scores, sh.threads);
        if (trace()) {  // CDD_TRACE=1: where a batch's time goes, on stderr
            const auto t3 = std::chrono::steady_clock::now();
            auto ms = [](std::chrono::steady_clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
            std::fprintf(stderr, "cdd aoti batch %zu: preprocess %.1f ms, network %.1f ms, map %.1f ms\n", n,
                         ms(t1 - t0), ms(t2 - t1), ms(t3 - t2));
        }
    }

    const float* maps() const override { return maps_.data(); }

private:
    std::shared_ptr<Shared> sh_;
    std::vector<float> input_;  // max_batch x 3 x H x W; a call uses a prefix of it
    std::vector<float> maps_;
};

#ifdef CDD_WITH_CUDA
/// The CUDA path. NOT RUN ON THE DEVELOPMENT MACHINES (no GPU): see the top of this file.
class AotiCudaWorker final : public Worker {
public:
    explicit AotiCudaWorker(std::shared_ptr<Shared> sh) : sh_(std::move(sh)) {
        Shared& s = *sh_;
        s.ctx->make_current();
        stream_.reset(new cuda::Stream());
        const std::size_t B = static_cast<std::size_t>(s.max_batch), plane = static_cast<std::size_t>(3) * s.H * s.W;
        const std::size_t full = static_cast<std::size_t>(s.H) * s.W;
        input_.reserve(B * plane * sizeof(float));
        maps_.resize(B * full);
        if (s.kernels) {
            std::vector<cuda::FeatureGeometry> geo;
            for (const FeatureInfo& f : s.features)
                geo.push_back({f.channels, f.height, f.width, kernels::DType::Float32});
            gpu_map_.reset(new cuda::GpuAnomalyMap(*s.kernels, s.H, s.W, geo, s.map, s.max_batch, s.sm_count));
            gpu_pre_.reset(new cuda::GpuPreprocess(*s.kernels, s.H, s.W, s.norm));
            maps_dev_.reserve(B * full * sizeof(float));
            scores_dev_.reserve(B * sizeof(float));
            host_maps_.reserve(B * full * sizeof(float));
            host_scores_.reserve(B * sizeof(float));
        } else {
            host_input_.reserve(B * plane * sizeof(float));
            for (const FeatureInfo& f : s.features) {
                const std::size_t bytes = B * f.channels * f.height * f.width * sizeof(float);
                host_features_.emplace_back(new cuda::PinnedBuffer(bytes));
                host_features_.emplace_back(new cuda::PinnedBuffer(bytes));
            }
        }
    }

    void run(const ImageView* views, std::size_t n, float* scores) override {
        Shared& s = *sh_;
        s.ctx->make_current();  // the calling thread may differ from call to call
        const CUstream st = stream_->get();
        const cuda::Driver& d = cuda::driver();
        const std::size_t plane = static_cast<std::size_t>(3) * s.H * s.W, full = static_cast<std::size_t>(s.H) * s.W;
        const std::size_t S = s.features.size();
        // 1. pre-processing into the input buffer on the worker's stream
        if (gpu_pre_) {
            for (std::size_t i = 0; i < n; ++i)
                gpu_pre_->run(views[i], staging_, input_.get() + i * plane * sizeof(float), st);
        } else {
            float* host = static_cast<float*>(host_input_.get());
            const int outer = static_cast<int>(std::min<std::size_t>(n, s.threads));
            parallel_for(n, outer, [&](std::size_t b, std::size_t e) {
                for (std::size_t i = b; i < e; ++i)
                    kernels::preprocess(views[i], s.H, s.W, s.norm, host + i * plane, std::max(1, s.threads / outer));
            });
            cuda::check(d.memcpy_htod_async(input_.get(), host, n * plane * sizeof(float), st), "cuMemcpyHtoDAsync(input)");
        }
        // 2. the package on the same stream (AOTInductor's stream_handle is a cudaStream_t)
        std::vector<at::Tensor> out;
        try {
            const at::Tensor x = at::from_blob(reinterpret_cast<void*>(input_.get()),
                                               {static_cast<std::int64_t>(n), 3, s.H, s.W},
                                               at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, s.ordinal));
            out = s.run(x, n, reinterpret_cast<void*>(st));
            bool contiguous = true;
            for (const at::Tensor& t : out) contiguous = contiguous && t.is_contiguous();
            if (!contiguous) {
                // .contiguous() runs on libtorch's current stream of the device (the default
                // stream here): order it after the package's work and the map after it
                stream_->synchronize();
                for (at::Tensor& t : out)
                    if (!t.is_contiguous()) t = t.contiguous();
                cuda::check(d.stream_synchronize(CU_STREAM_LEGACY), "cuStreamSynchronize(default stream)");
            }
        } catch (const Error&) {
            throw;
        } catch (const std::exception& e) {
            throw Error(ErrorCode::Backend, "AOTInductor run of " + s.file + " failed: " + torch_message(e));
        }
        // 3. the anomaly map: fused on the GPU, or on the CPU after copying the features out
        if (gpu_map_) {
            std::vector<cuda::DeviceFeature> levels;
            for (std::size_t k = 0; k < S; ++k)
                levels.push_back({reinterpret_cast<CUdeviceptr>(out[k].data_ptr()),
                                  reinterpret_cast<CUdeviceptr>(out[k + S].data_ptr())});
            gpu_map_->run(levels.data(), static_cast<int>(n), maps_dev_.get(), scores_dev_.get(), st);
            cuda::check(d.memcpy_dtoh_async(host_maps_.get(), maps_dev_.get(), n * full * sizeof(float), st),
                        "cuMemcpyDtoHAsync(maps)");
            cuda::check(d.memcpy_dtoh_async(host_scores_.get(), scores_dev_.get(), n * sizeof(float), st),
                        "cuMemcpyDtoHAsync(scores)");
            stream_->synchronize();  // also keeps `out` alive until the map has read it
            std::memcpy(scores, host_scores_.get(), n * sizeof(float));
            std::memcpy(maps_.data(), host_maps_.get(), n * full * sizeof(float));
            return;
        }
        std::vector<kernels::FeaturePair> levels(S);
        for (std::size_t k = 0; k < 2 * S; ++k) {
            const FeatureInfo& f = s.features[k % S];
            const std::size_t bytes = n * f.channels * f.height * f.width * sizeof(float);
            cuda::check(d.memcpy_dtoh_async(host_features_[k]->get(), reinterpret_cast<CUdeviceptr>(out[k].data_ptr()),
                                            bytes, st),
                        "cuMemcpyDtoHAsync(features)");
        }
        stream_->synchronize();
        for (std::size_t k = 0; k < S; ++k)
            levels[k] = {host_features_[k]->get(), host_features_[k + S]->get(), kernels::DType::Float32,
                         s.features[k].channels, s.features[k].height, s.features[k].width};
        s.amap.run_batch(levels.data(), n, maps_.data(), scores, s.threads);
    }

    const float* maps() const override { return maps_.data(); }

private:
    std::shared_ptr<Shared> sh_;
    std::unique_ptr<cuda::Stream> stream_;
    cuda::DeviceBuffer input_, maps_dev_, scores_dev_, staging_;
    cuda::PinnedBuffer host_maps_, host_scores_, host_input_;
    std::vector<std::unique_ptr<cuda::PinnedBuffer>> host_features_;  // teacher_0..2, student_0..2
    std::vector<float> maps_;
    std::unique_ptr<cuda::GpuAnomalyMap> gpu_map_;
    std::unique_ptr<cuda::GpuPreprocess> gpu_pre_;
};
#endif

}  // namespace

std::vector<std::unique_ptr<Worker>> make_aoti_workers(const Manifest& m, const EngineOptions& options,
                                                       EngineInfo& info) {
    const std::string file = m.path("model.pt2");
    const std::string dev = lower(options.device);
    const bool want_cuda = dev == "cuda" || dev.rfind("cuda:", 0) == 0;
    if (!want_cuda && dev != "cpu")
        throw Error(ErrorCode::InvalidArgument, "an aoti engine runs on device \"CPU\" or \"cuda[:N]\", got \"" +
                                                    options.device + "\"");
    // what the package was compiled for, before anything is opened
    if (m.aoti.device != (want_cuda ? "cuda" : "cpu"))
        throw Error(ErrorCode::EngineFormat,
                    m.dir + ": this aoti package was compiled for device \"" + m.aoti.device + "\" but is being loaded on \"" +
                        options.device + "\"; rebuild it for the target (cdd_engine.build(run_dir, backend=\"aoti\", device=\"" +
                        (want_cuda ? "cuda" : "cpu") + "\")) or load it on " + m.aoti.device);
    if (m.aoti.torch_version != CDD_TORCH_VERSION)
        throw Error(ErrorCode::EngineFormat,
                    m.dir + ": this aoti package was compiled with torch " + m.aoti.torch_version +
                        " but libcdd_engine runs libtorch " + CDD_TORCH_VERSION +
                        "; AOTInductor packages are tied to the torch build that compiled them: rebuild the engine "
                        "with this torch (cdd_engine.build(run_dir, backend=\"aoti\", ...))");
    verify_files(m, options.verify_hashes);

    auto sh = std::make_shared<Shared>(make_anomaly_map(m));
    sh->file = file;
    sh->cuda = want_cuda;
    sh->H = m.image_h;
    sh->W = m.image_w;
    sh->max_batch = m.max_batch;
    sh->threads = info.num_threads;
    sh->norm = m.norm;
    sh->map = m.map;
    sh->features = m.teachers;
    if (want_cuda) {
#ifdef CDD_WITH_CUDA
        sh->ordinal = cuda_ordinal(options.device);
        sh->ctx.reset(new cuda::Context(sh->ordinal));
        int sms = 1;
        cuda::check(cuda::driver().device_get_attribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, sh->ctx->device()),
                    "cuDeviceGetAttribute");
        sh->sm_count = sms;
        if (cuda::aot_kernels_embedded()) sh->kernels.reset(new cuda::KernelSet(sh->ctx->compute_capability()));
#else
        (void)cuda_ordinal(options.device);
        throw Error(ErrorCode::Unsupported,
                    "a CUDA aoti engine needs libcdd_engine built with CDD_WITH_CUDA=ON as well as CDD_WITH_AOTI "
                    "(GPU pre/post-processing around the package); this build has only the CPU path");
#endif
    }
    ZipFile(file).check();  // before libtorch extracts and dlopens anything from it
    try {
        // the package's own record of its device (and CPU instruction set): a relabelled
        // engine.json is refused before the generated code is loaded
        const std::unordered_map<std::string, std::string> meta =
            torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(file, "model");
        const auto key = meta.find("AOTI_DEVICE_KEY");
        if (key != meta.end() && key->second != m.aoti.device)
            throw Error(ErrorCode::EngineFormat, file + " was compiled for device \"" + key->second +
                                                     "\" but engine.json's aoti.device says \"" + m.aoti.device +
                                                     "\": relabelled or replaced package; rebuild the engine");
        const auto isa = meta.find("AOTI_CPU_ISA");
        if (!want_cuda && isa != meta.end()) check_cpu_isa(m, isa->second);
        const c10::DeviceIndex index = want_cuda ? static_cast<c10::DeviceIndex>(sh->ordinal) : -1;
        sh->loader.reset(new torch::inductor::AOTIModelPackageLoader(
            file, "model", /*run_single_threaded=*/false, static_cast<std::size_t>(options.num_streams), index));
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        throw Error(ErrorCode::EngineFormat, file + " cannot be loaded as an AOTInductor package (corrupt, or "
                                                    "written by another torch?): " + torch_message(e) +
                                                 "; rebuild the engine");
    }
    info.backend = "aoti";
    info.model_file = "model.pt2";
    std::vector<std::unique_ptr<Worker>> workers;
    for (int i = 0; i < options.num_streams; ++i) {
#ifdef CDD_WITH_CUDA
        if (want_cuda) {
            workers.emplace_back(new AotiCudaWorker(sh));
            continue;
        }
#endif
        workers.emplace_back(new AotiCpuWorker(sh));
    }
    return workers;
}

}  // namespace detail
}  // namespace cdd
