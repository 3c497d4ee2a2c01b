// Launchers of the AOT-compiled Triton kernels (see gpu_kernels.hpp). Compiled by nvcc in
// CDD_WITH_CUDA builds. Cannot run without an NVIDIA GPU; its test skips there.
//
// The operator tables (upsample/blur matrices, their band windows, the resize windows) come
// from ../operators.hpp, the same functions the CPU kernels use; csrc/tests/test_cuda_kernels.cpp
// checks the launched kernels against the committed golden vectors of tests/golden/.
#include "gpu_kernels.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>

#include "../operators.hpp"
#include "aot_kernels.hpp"
#include "cdd/error.hpp"

namespace cdd {
namespace cuda {

#ifndef CDD_AOT_KERNELS
const AotKernel kAotKernels[1] = {};
const std::size_t kAotKernelCount = 0;
#endif

bool aot_kernels_embedded() noexcept { return kAotKernelCount > 0; }

namespace {

// pass-1 programs per SM when splitting channels: kernels/anomaly_map.py PROGRAMS_PER_SM (the
// split count changes only the order of fp32 additions, never which elements are summed)
constexpr int kProgramsPerSm = 2;

int cdiv(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

int32_t to_i32(long long v, const char* what) {
    if (v < 0 || v > std::numeric_limits<int32_t>::max())
        throw Error(ErrorCode::InvalidArgument, std::string(what) + " does not fit the kernels' 32-bit indices");
    return static_cast<int32_t>(v);
}

template <class T>
DeviceBuffer upload_now(const std::vector<T>& host) {
    DeviceBuffer d(std::max<std::size_t>(host.size() * sizeof(T), 16));
    if (!host.empty())
        check(driver().memcpy_htod_async(d.get(), host.data(), host.size() * sizeof(T), nullptr), "cuMemcpyHtoD");
    check(driver().stream_synchronize(nullptr), "cuStreamSynchronize");
    return d;
}

}  // namespace

// ------------------------------------------------------------------------------ KernelSet
KernelSet::KernelSet(int cc) {
    if (!aot_kernels_embedded())
        throw Error(ErrorCode::Unsupported,
                    "this build of libcdd_engine has no GPU kernels (configure with -DCDD_WITH_CUDA=ON where "
                    "Triton can compile kernels/aot.py, or pass -DCDD_AOT_DIR=<its output>)");
    const Driver& d = driver();
    std::map<std::string, const AotKernel*> best;
    for (std::size_t i = 0; i != kAotKernelCount; ++i) {
        const AotKernel& k = kAotKernels[i];
        if (k.arch > cc || k.global_scratch_bytes > 0) continue;  // cannot run / needs scratch we do not pass
        const AotKernel*& b = best[k.name];
        if (b == nullptr || k.arch > b->arch) b = &k;
    }
    for (const auto& kv : best) {
        const AotKernel& k = *kv.second;
        // the exact architecture's cubin, else the PTX (the driver compiles it for this GPU)
        const void* image = k.arch == cc ? static_cast<const void*>(k.cubin) : static_cast<const void*>(k.ptx);
        CUmodule mod = nullptr;
        check(d.module_load_data(&mod, image), ("cuModuleLoadData(" + kv.first + ")").c_str());
        modules_.push_back(mod);
        Fn f;
        f.info = &k;
        check(d.module_get_function(&f.fn, mod, k.entry), ("cuModuleGetFunction(" + kv.first + ")").c_str());
        if (k.shared_bytes > 48 * 1024)  // above the default dynamic shared memory limit: opt in
            check(d.func_set_attribute(f.fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, k.shared_bytes),
                  "cuFuncSetAttribute");
        fns_[kv.first] = f;
    }
}

KernelSet::~KernelSet() {
    for (CUmodule m : modules_) driver().module_unload(m);
}

const KernelSet::Fn& KernelSet::get(const std::string& name) const {
    auto it = fns_.find(name);
    if (it == fns_.end())
        throw Error(ErrorCode::Unsupported, "GPU kernel " + name + " is not embedded for this GPU's architecture");
    return it->second;
}

void KernelSet::launch(const Fn& f, unsigned gx, unsigned gy, unsigned gz, std::vector<void*> args, CUstream s) const {
    static CUdeviceptr null_scratch[4] = {0, 0, 0, 0};
    for (int i = 0; i < f.info->extra_scratch && i < 4; ++i) args.push_back(&null_scratch[i]);
    if (static_cast<int>(args.size()) != f.info->num_params)
        throw Error(ErrorCode::Backend, std::string("kernel ") + f.info->name + " takes " +
                                            std::to_string(f.info->num_params) + " parameters, the launcher passes " +
                                            std::to_string(args.size()) + ": the AOT build does not match this library");
    if (gx == 0 || gy == 0 || gz == 0) return;
    check(driver().launch_kernel(f.fn, gx, gy, gz, static_cast<unsigned>(f.info->threads), 1, 1,
                                 static_cast<unsigned>(f.info->shared_bytes), s, args.data(), nullptr),
          (std::string("cuLaunchKernel(") + f.info->name + ")").c_str());
}

// ------------------------------------------------------------------------------ anomaly map
GpuAnomalyMap::Ops GpuAnomalyMap::upload(const std::vector<std::pair<std::vector<double>, std::vector<double>>>& mats,
                                         const std::vector<std::pair<int, int>>& in_sizes, int bm, int bn) {
    Ops ops;
    std::vector<float> a, bt;
    std::vector<int> win;
    for (std::size_t s = 0; s < mats.size(); ++s) {
        const int h = in_sizes[s].first, w = in_sizes[s].second;
        const std::vector<double>& A = mats[s].first;   // (H x h)
        const std::vector<double>& B = mats[s].second;  // (W x w)
        const int rwin_off = static_cast<int>(win.size());
        const auto rw = detail::band_windows(A.data(), H_, h, bm);
        win.insert(win.end(), rw.begin(), rw.end());
        const int cwin_off = static_cast<int>(win.size());
        const auto cw = detail::band_windows(B.data(), W_, w, bn);
        win.insert(win.end(), cw.begin(), cw.end());
        ops.static_rows.push_back({h, w, to_i32(static_cast<long long>(a.size()), "operator size"),
                                   to_i32(static_cast<long long>(bt.size()), "operator size"), rwin_off, cwin_off});
        for (double v : A) a.push_back(static_cast<float>(v));
        for (int j = 0; j < w; ++j)  // B^T, (w x W) row-major
            for (int x = 0; x < W_; ++x) bt.push_back(static_cast<float>(B[static_cast<std::size_t>(x) * w + j]));
    }
    ops.a = upload_now(a);
    ops.bt = upload_now(bt);
    ops.win = upload_now(win);
    return ops;
}

GpuAnomalyMap::GpuAnomalyMap(const KernelSet& ks, int H, int W, std::vector<FeatureGeometry> scales,
                             const kernels::MapSettings& settings, int max_batch, int sm_count)
    : ks_(ks), H_(H), W_(W), max_batch_(max_batch), settings_(settings), scales_(std::move(scales)) {
    if (H <= 0 || W <= 0 || scales_.empty() || max_batch <= 0)
        throw Error(ErrorCode::InvalidArgument, "GPU anomaly map: empty map size, no scales or max_batch < 1");
    const bool add = settings.mode == kernels::MapMode::Add;
    std::vector<double> taps;
    if (settings.sigma > 0) taps = kernels::gaussian_taps(settings.sigma, settings.truncate);
    const bool blur_stage = !add && !taps.empty();
    sandwich_ = &ks_.get(add ? "cdd_map_add" : "cdd_map_mul_product");
    const int bm = sandwich_->info->tile[kBlockM], bn = sandwich_->info->tile[kBlockN];
    // add: A = G U (the blur folded in); mul: plain upsampling, the blur is a second launch
    std::vector<std::pair<std::vector<double>, std::vector<double>>> mats;
    std::vector<std::pair<int, int>> sizes;
    for (const FeatureGeometry& g : scales_) {
        if (g.channels <= 0 || g.height <= 0 || g.width <= 0)
            throw Error(ErrorCode::InvalidArgument, "GPU anomaly map: empty feature scale");
        mats.emplace_back(detail::blur_upsample_matrix(H, g.height, add ? taps : std::vector<double>()),
                          detail::blur_upsample_matrix(W, g.width, add ? taps : std::vector<double>()));
        sizes.emplace_back(g.height, g.width);
        const long long hw = static_cast<long long>(g.height) * g.width;
        pass1_.push_back(&ks_.get(std::string("cdd_cosine_partials_") +
                                  (g.dtype == kernels::DType::Float16 ? "fp16" : "fp32") + "_nchw_" +
                                  (hw % 16 == 0 ? "d16" : "any")));
    }
    first_ = upload(mats, sizes, bm, bn);
    if (blur_stage) {
        blur_fn_ = &ks_.get("cdd_map_blur");
        blur_ = upload({{detail::blur_matrix(H, taps), detail::blur_matrix(W, taps)}}, {{H, W}},
                       blur_fn_->info->tile[kBlockM], blur_fn_->info->tile[kBlockN]);
        const auto& r = blur_.static_rows[0];
        blur_meta_ = upload_now(std::vector<int>{r[0], r[1], 1, 0, r[2], r[3], r[4], r[5]});
        prod_.reserve(static_cast<std::size_t>(max_batch) * H * W * sizeof(float));
    }
    // pass-1 plan per batch size (kernels/anomaly_map.py _split_plan) and its meta rows
    const int sms = std::max(1, sm_count);
    long long ws_max = 0;
    for (int B = 1; B <= max_batch; ++B) {
        Plan p;
        long long total = 0;
        std::vector<int> meta;
        for (std::size_t s = 0; s < scales_.size(); ++s) {
            const FeatureGeometry& g = scales_[s];
            const long long hw = static_cast<long long>(g.height) * g.width;
            const int block_c = pass1_[s]->info->tile[kBlockC], block_p = pass1_[s]->info->tile[kBlockP];
            const int chunks = cdiv(g.channels, block_c);
            const int k = std::max(1, std::min(cdiv(static_cast<long long>(kProgramsPerSm) * sms,
                                                    static_cast<long long>(cdiv(hw, block_p)) * B),
                                               chunks / 2));
            const int cps = cdiv(chunks, k) * block_c;
            const int splits = cdiv(g.channels, cps);
            p.splits.push_back(splits);
            p.c_per_split.push_back(cps);
            p.x_off.push_back(total);
            const auto& r = first_.static_rows[s];
            meta.insert(meta.end(), {r[0], r[1], splits, to_i32(total, "anomaly-map workspace"), r[2], r[3], r[4], r[5]});
            total += (static_cast<long long>(splits) * 3 * B * hw + 3) / 4 * 4;  // 16-byte aligned slabs
        }
        to_i32(total, "anomaly-map workspace");
        ws_max = std::max(ws_max, total);
        p.meta = upload_now(meta);
        plans_.push_back(std::move(p));
    }
    ws_.reserve(static_cast<std::size_t>(ws_max) * sizeof(float));
    long long tiles = static_cast<long long>(cdiv(W, bn)) * cdiv(H, bm);
    if (blur_fn_)
        tiles = std::max(tiles, static_cast<long long>(cdiv(W, blur_fn_->info->tile[kBlockN])) *
                                    cdiv(H, blur_fn_->info->tile[kBlockM]));
    tile_max_.reserve(static_cast<std::size_t>(max_batch) * tiles * sizeof(float));
}

void GpuAnomalyMap::run(const DeviceFeature* levels, int batch, CUdeviceptr maps, CUdeviceptr scores,
                        CUstream stream) const {
    if (batch <= 0) return;
    if (batch > max_batch_)
        throw Error(ErrorCode::InvalidArgument, "GPU anomaly map: batch " + std::to_string(batch) + " > max_batch " +
                                                    std::to_string(max_batch_));
    const Plan& p = plans_[batch - 1];
    for (std::size_t s = 0; s < scales_.size(); ++s) {  // pass 1: channel sums, each feature element read once
        const FeatureGeometry& g = scales_[s];
        int32_t C = g.channels, hw = g.height * g.width, w = g.width;
        int32_t sb = C * hw, sc = hw, sh = w, B = batch, cp = p.c_per_split[s];
        CUdeviceptr t = levels[s].teacher, u = levels[s].student;
        CUdeviceptr ws = ws_.get() + static_cast<CUdeviceptr>(p.x_off[s]) * sizeof(float);
        ks_.launch(*pass1_[s], cdiv(hw, pass1_[s]->info->tile[kBlockP]), batch, p.splits[s],
                   {&t, &u, &ws, &C, &hw, &w, &sb, &sc, &sh, &sb, &sc, &sh, &B, &cp}, stream);
    }
    // pass 2: the banded sandwich A_s d_s B_s^T per tile, plus tile maxima
    const int bm = sandwich_->info->tile[kBlockM], bn = sandwich_->info->tile[kBlockN];
    const int gx = cdiv(W_, bn), gy = cdiv(H_, bm);
    int32_t ns = static_cast<int32_t>(scales_.size()), B = batch, H = H_, W = W_;
    CUdeviceptr x = ws_.get(), a = first_.a.get(), bt = first_.bt.get(), meta = p.meta.get(), win = first_.win.get(),
                tm = tile_max_.get(), out = blur_fn_ ? prod_.get() : maps;
    ks_.launch(*sandwich_, gx, gy, batch, {&x, &a, &bt, &meta, &win, &out, &tm, &ns, &B, &H, &W}, stream);
    int32_t n_tiles = gx * gy;
    if (blur_fn_) {  // mode mul: blur the product map, new tile maxima
        const int gx2 = cdiv(W_, blur_fn_->info->tile[kBlockN]), gy2 = cdiv(H_, blur_fn_->info->tile[kBlockM]);
        CUdeviceptr px = prod_.get(), ba = blur_.a.get(), bbt = blur_.bt.get(), bmeta = blur_meta_.get(),
                    bwin = blur_.win.get(), mout = maps;
        int32_t one = 1;
        ks_.launch(*blur_fn_, gx2, gy2, batch, {&px, &ba, &bbt, &bmeta, &bwin, &mout, &tm, &one, &B, &H, &W}, stream);
        n_tiles = gx2 * gy2;
    }
    CUdeviceptr sc_out = scores;
    ks_.launch(ks_.get("cdd_row_max"), batch, 1, 1, {&tm, &sc_out, &n_tiles}, stream);
}

// ------------------------------------------------------------------------------ preprocess
GpuPreprocess::GpuPreprocess(const KernelSet& ks, int h, int w, const kernels::Normalization& norm)
    : ks_(ks), h_(h), w_(w) {
    ks_.get("cdd_preprocess_u8_to_fp32");
    std::vector<float> affine(6);
    for (int c = 0; c < 3; ++c) {
        affine[c] = static_cast<float>(1.0 / (255.0 * norm.std[c]));
        affine[3 + c] = static_cast<float>(-static_cast<double>(norm.mean[c]) / norm.std[c]);
    }
    affine_ = upload_now(affine);
}

const GpuPreprocess::Tables& GpuPreprocess::tables(int in, int out, std::map<int, Tables>& cache) {
    auto it = cache.find(in);
    if (it != cache.end()) return it->second;
    // PyTorch's windows untrimmed (starts never decrease, as the kernel's row band assumes),
    // repacked to the widest window (kernels/preprocess.py antialias_taps)
    const detail::AxisWeights ax = detail::antialias_weights(in, out, false);
    int taps = 1;
    for (int n : ax.size) taps = std::max(taps, n);
    std::vector<float> wts(static_cast<std::size_t>(out) * taps, 0.f);
    for (int i = 0; i < out; ++i)
        for (int j = 0; j < ax.size[i]; ++j)
            wts[static_cast<std::size_t>(i) * taps + j] = ax.w[static_cast<std::size_t>(i) * ax.max_taps + j];
    Tables t;
    t.start = upload_now(ax.start);
    t.weights = upload_now(wts);
    t.taps = taps;
    if (cache.size() > 64) cache.clear();  // frame sizes of one line are few; bound it anyway
    return cache.emplace(in, std::move(t)).first->second;
}

void GpuPreprocess::run(const ImageView& v, DeviceBuffer& staging, CUdeviceptr out, CUstream stream) {
    validate(v, 0);
    const int c = channels(v.format);
    const std::size_t bytes = (static_cast<std::size_t>(v.height) - 1) * v.stride_bytes + static_cast<std::size_t>(v.width) * c;
    to_i32(static_cast<long long>(bytes), "frame size in bytes");
    staging.reserve(bytes);
    check(driver().memcpy_htod_async(staging.get(), v.data, bytes, stream), "cuMemcpyHtoDAsync(frame)");
    const Tables& ty = tables(v.height, h_, rows_);
    const Tables& tx = tables(v.width, w_, cols_);
    const KernelSet::Fn& k = ks_.get("cdd_preprocess_u8_to_fp32");
    CUdeviceptr src = staging.get(), o = out, y0 = ty.start.get(), wy = ty.weights.get(), x0 = tx.start.get(),
                wx = tx.weights.get(), af = affine_.get();
    int32_t H = v.height, W = v.width, h = h_, w = w_, ky = ty.taps, kx = tx.taps;
    int32_t sn = 0, sh = static_cast<int32_t>(v.stride_bytes), sw = c;
    int32_t osn = 3 * h_ * w_, osc = h_ * w_, osh = w_;
    const bool bgr = v.format == PixelFormat::BGR8, mono = v.format == PixelFormat::Mono8;
    int32_t ch0 = mono ? 0 : (bgr ? 2 : 0), ch1 = mono ? 0 : 1, ch2 = mono ? 0 : (bgr ? 0 : 2);
    ks_.launch(k, cdiv(w_, k.info->tile[kBlockN]), cdiv(h_, k.info->tile[kBlockM]), 1,
               {&src, &o, &y0, &wy, &x0, &wx, &af, &H, &W, &h, &w, &ky, &kx, &sn, &sh, &sw, &osn, &osc, &osh, &ch0,
                &ch1, &ch2},
               stream);
}

}  // namespace cuda
}  // namespace cdd
