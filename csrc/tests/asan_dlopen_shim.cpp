// Linked into the test programs of AddressSanitizer builds (CDD_ASAN) only.
//
// ASan aborts any dlopen(..., RTLD_DEEPBIND) (google/sanitizers issue 611), and the TBB inside
// the OpenVINO wheel opens libtbbbind that way when it starts its thread pool. The executable
// is first in symbol lookup, so defining dlopen here (exported with -rdynamic) lets the flag be
// dropped before the sanitizer's own dlopen sees it. Without DEEPBIND, tbbbind resolves hwloc
// symbols globally; there is only one hwloc in the process, so nothing changes.
#include <dlfcn.h>

extern "C" void* dlopen(const char* file, int mode) {
    using dlopen_fn = void* (*)(const char*, int);
    static const dlopen_fn next = reinterpret_cast<dlopen_fn>(dlsym(RTLD_NEXT, "dlopen"));
    return next(file, mode & ~RTLD_DEEPBIND);
}
