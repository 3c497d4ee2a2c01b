// Run-time loading of the CUDA driver (see driver.hpp). Compiled by nvcc in CDD_WITH_CUDA builds.
#include "driver.hpp"

#include <dlfcn.h>

#include <mutex>

#include "cdd/error.hpp"

namespace cdd {
namespace cuda {
namespace {

struct Loaded {
    Driver d;
    std::string error;  // empty when loaded
};

template <class F>
bool resolve(void* lib, F& fn, const char* name, std::string& error) {
    fn = reinterpret_cast<F>(dlsym(lib, name));
    if (fn == nullptr && error.empty()) error = std::string("libcuda.so.1 has no entry point ") + name;
    return fn != nullptr;
}

Loaded load() {
    Loaded l;
    // never closed: the driver stays loaded for the life of the process, like a linked one
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
        const char* why = dlerror();
        l.error = std::string("the CUDA driver (libcuda.so.1) cannot be loaded: ") + (why ? why : "not found") +
                  " (no NVIDIA driver on this machine?)";
        return l;
    }
    Driver& d = l.d;
    std::string& e = l.error;
    resolve(lib, d.init, "cuInit", e);
    resolve(lib, d.get_error_string, "cuGetErrorString", e);
    resolve(lib, d.device_get_count, "cuDeviceGetCount", e);
    resolve(lib, d.device_get, "cuDeviceGet", e);
    resolve(lib, d.device_get_attribute, "cuDeviceGetAttribute", e);
    resolve(lib, d.primary_ctx_retain, "cuDevicePrimaryCtxRetain", e);
    resolve(lib, d.primary_ctx_release, "cuDevicePrimaryCtxRelease_v2", e);
    resolve(lib, d.ctx_set_current, "cuCtxSetCurrent", e);
    resolve(lib, d.module_load_data, "cuModuleLoadData", e);
    resolve(lib, d.module_unload, "cuModuleUnload", e);
    resolve(lib, d.module_get_function, "cuModuleGetFunction", e);
    resolve(lib, d.func_set_attribute, "cuFuncSetAttribute", e);
    resolve(lib, d.launch_kernel, "cuLaunchKernel", e);
    resolve(lib, d.mem_alloc, "cuMemAlloc_v2", e);
    resolve(lib, d.mem_free, "cuMemFree_v2", e);
    resolve(lib, d.mem_alloc_host, "cuMemAllocHost_v2", e);
    resolve(lib, d.mem_free_host, "cuMemFreeHost", e);
    resolve(lib, d.memcpy_htod_async, "cuMemcpyHtoDAsync_v2", e);
    resolve(lib, d.memcpy_dtoh_async, "cuMemcpyDtoHAsync_v2", e);
    resolve(lib, d.memcpy_2d_async, "cuMemcpy2DAsync_v2", e);
    resolve(lib, d.stream_create, "cuStreamCreate", e);
    resolve(lib, d.stream_destroy, "cuStreamDestroy_v2", e);
    resolve(lib, d.stream_synchronize, "cuStreamSynchronize", e);
    resolve(lib, d.stream_begin_capture, "cuStreamBeginCapture_v2", e);
    resolve(lib, d.stream_end_capture, "cuStreamEndCapture", e);
    resolve(lib, d.graph_instantiate, "cuGraphInstantiateWithFlags", e);
    resolve(lib, d.graph_launch, "cuGraphLaunch", e);
    resolve(lib, d.graph_exec_destroy, "cuGraphExecDestroy", e);
    resolve(lib, d.graph_destroy, "cuGraphDestroy", e);
    if (!e.empty()) return l;
    const CUresult r = d.init(0);
    if (r != CUDA_SUCCESS) {
        const char* s = nullptr;
        d.get_error_string(r, &s);
        e = std::string("cuInit failed: ") + (s ? s : "unknown error");
    }
    return l;
}

const Loaded& loaded() {
    static const Loaded l = load();  // thread-safe static initialisation
    return l;
}

}  // namespace

const Driver& driver() {
    const Loaded& l = loaded();
    if (!l.error.empty()) throw Error(ErrorCode::Unsupported, l.error);
    return l.d;
}

bool available() noexcept {
    const Loaded& l = loaded();
    if (!l.error.empty()) return false;
    int n = 0;
    return l.d.device_get_count(&n) == CUDA_SUCCESS && n > 0;
}

void check(CUresult r, const char* what) {
    if (r == CUDA_SUCCESS) return;
    const char* s = nullptr;
    if (loaded().d.get_error_string) loaded().d.get_error_string(r, &s);
    throw Error(ErrorCode::Backend, std::string(what) + ": " + (s ? s : "CUDA error ") +
                                        (s ? "" : std::to_string(static_cast<int>(r))));
}

Context::Context(int ordinal) {
    const Driver& d = driver();
    int n = 0;
    check(d.device_get_count(&n), "cuDeviceGetCount");
    if (ordinal < 0 || ordinal >= n)
        throw Error(ErrorCode::InvalidArgument, "CUDA device " + std::to_string(ordinal) + " does not exist (" +
                                                    std::to_string(n) + " visible)");
    check(d.device_get(&dev_, ordinal), "cuDeviceGet");
    int major = 0, minor = 0;
    check(d.device_get_attribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev_), "cuDeviceGetAttribute");
    check(d.device_get_attribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev_), "cuDeviceGetAttribute");
    cc_ = major * 10 + minor;
    check(d.primary_ctx_retain(&ctx_, dev_), "cuDevicePrimaryCtxRetain");
    make_current();
}

Context::~Context() {
    if (ctx_) driver().primary_ctx_release(dev_);
}

void Context::make_current() const { check(driver().ctx_set_current(ctx_), "cuCtxSetCurrent"); }

DeviceBuffer::DeviceBuffer(std::size_t bytes) { reserve(bytes); }

DeviceBuffer::~DeviceBuffer() {
    if (ptr_) driver().mem_free(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = 0;
    o.bytes_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
        if (ptr_) driver().mem_free(ptr_);
        ptr_ = o.ptr_;
        bytes_ = o.bytes_;
        o.ptr_ = 0;
        o.bytes_ = 0;
    }
    return *this;
}

void DeviceBuffer::reserve(std::size_t bytes) {
    if (bytes <= bytes_) return;
    if (ptr_) driver().mem_free(ptr_);
    ptr_ = 0;
    bytes_ = 0;
    check(driver().mem_alloc(&ptr_, bytes), "cuMemAlloc");
    bytes_ = bytes;
}

PinnedBuffer::PinnedBuffer(std::size_t bytes) { reserve(bytes); }

PinnedBuffer::~PinnedBuffer() {
    if (ptr_) driver().mem_free_host(ptr_);
}

void PinnedBuffer::reserve(std::size_t bytes) {
    if (bytes <= bytes_) return;
    if (ptr_) driver().mem_free_host(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    check(driver().mem_alloc_host(&ptr_, bytes), "cuMemAllocHost");
    bytes_ = bytes;
}

Stream::Stream() { check(driver().stream_create(&s_, CU_STREAM_NON_BLOCKING), "cuStreamCreate"); }

Stream::~Stream() {
    if (s_) driver().stream_destroy(s_);
}

void Stream::synchronize() const { check(driver().stream_synchronize(s_), "cuStreamSynchronize"); }

}  // namespace cuda
}  // namespace cdd
