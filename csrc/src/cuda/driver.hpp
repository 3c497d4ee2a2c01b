// The CUDA driver API, loaded at run time with dlopen("libcuda.so.1"): libcdd_engine has no
// link-time dependency on the driver, so one build runs on machines with and without a GPU,
// and a machine without one gets a cdd::Error instead of a loader failure.
//
// Only the entry points the engine uses are resolved, by their versioned exported names
// (cuMemAlloc_v2, ...), which is what cuda.h's macros map the plain names to.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <string>

namespace cdd {
namespace cuda {

struct Driver {
    decltype(&::cuInit) init = nullptr;
    decltype(&::cuGetErrorString) get_error_string = nullptr;
    decltype(&::cuDeviceGetCount) device_get_count = nullptr;
    decltype(&::cuDeviceGet) device_get = nullptr;
    decltype(&::cuDeviceGetAttribute) device_get_attribute = nullptr;
    decltype(&::cuDevicePrimaryCtxRetain) primary_ctx_retain = nullptr;
    decltype(&::cuDevicePrimaryCtxRelease) primary_ctx_release = nullptr;
    decltype(&::cuCtxSetCurrent) ctx_set_current = nullptr;
    decltype(&::cuModuleLoadData) module_load_data = nullptr;
    decltype(&::cuModuleUnload) module_unload = nullptr;
    decltype(&::cuModuleGetFunction) module_get_function = nullptr;
    decltype(&::cuFuncSetAttribute) func_set_attribute = nullptr;
    decltype(&::cuLaunchKernel) launch_kernel = nullptr;
    decltype(&::cuMemAlloc) mem_alloc = nullptr;
    decltype(&::cuMemFree) mem_free = nullptr;
    decltype(&::cuMemAllocHost) mem_alloc_host = nullptr;
    decltype(&::cuMemFreeHost) mem_free_host = nullptr;
    decltype(&::cuMemcpyHtoDAsync) memcpy_htod_async = nullptr;
    decltype(&::cuMemcpyDtoHAsync) memcpy_dtoh_async = nullptr;
    decltype(&::cuMemcpy2DAsync) memcpy_2d_async = nullptr;
    decltype(&::cuStreamCreate) stream_create = nullptr;
    decltype(&::cuStreamDestroy) stream_destroy = nullptr;
    decltype(&::cuStreamSynchronize) stream_synchronize = nullptr;
    decltype(&::cuStreamBeginCapture) stream_begin_capture = nullptr;
    decltype(&::cuStreamEndCapture) stream_end_capture = nullptr;
    decltype(&::cuGraphInstantiate) graph_instantiate = nullptr;
    decltype(&::cuGraphLaunch) graph_launch = nullptr;
    decltype(&::cuGraphExecDestroy) graph_exec_destroy = nullptr;
    decltype(&::cuGraphDestroy) graph_destroy = nullptr;
};

/// The driver, loaded and initialised once (thread-safe). Throws cdd::Error(Unsupported)
/// naming what is missing: no libcuda.so.1, a missing entry point, or cuInit failing.
const Driver& driver();

/// True when driver() would succeed and at least one CUDA device is visible.
bool available() noexcept;

/// Throws cdd::Error(Backend) "<what>: <driver's error string>" unless r == CUDA_SUCCESS.
void check(CUresult r, const char* what);

/// The primary context of device `ordinal`, made current on the calling thread; released
/// on destruction. Throws for a device index out of range.
class Context {
public:
    explicit Context(int ordinal);
    ~Context();
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;
    void make_current() const;
    CUdevice device() const noexcept { return dev_; }
    int compute_capability() const noexcept { return cc_; }  ///< e.g. 90 for sm_90

private:
    CUdevice dev_ = 0;
    CUcontext ctx_ = nullptr;
    int cc_ = 0;
};

/// Device memory owned by a unique handle.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(std::size_t bytes);
    ~DeviceBuffer();
    DeviceBuffer(DeviceBuffer&& o) noexcept;
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    CUdeviceptr get() const noexcept { return ptr_; }
    std::size_t bytes() const noexcept { return bytes_; }
    /// Grows (never shrinks) to at least `bytes`; contents are not kept.
    void reserve(std::size_t bytes);

private:
    CUdeviceptr ptr_ = 0;
    std::size_t bytes_ = 0;
};

/// Page-locked host memory (fast, asynchronous copies).
class PinnedBuffer {
public:
    PinnedBuffer() = default;
    explicit PinnedBuffer(std::size_t bytes);
    ~PinnedBuffer();
    PinnedBuffer(const PinnedBuffer&) = delete;
    PinnedBuffer& operator=(const PinnedBuffer&) = delete;
    void* get() const noexcept { return ptr_; }
    void reserve(std::size_t bytes);

private:
    void* ptr_ = nullptr;
    std::size_t bytes_ = 0;
};

/// A stream of the current context, destroyed with the object.
class Stream {
public:
    Stream();
    ~Stream();
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    CUstream get() const noexcept { return s_; }
    void synchronize() const;

private:
    CUstream s_ = nullptr;
};

}  // namespace cuda
}  // namespace cdd
