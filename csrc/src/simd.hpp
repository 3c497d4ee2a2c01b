// CDD_HOT: compile a hot loop twice, for x86-64-v3 (AVX2 + FMA) and for baseline x86-64,
// and pick at load time (GCC/Clang function multi-versioning through an ifunc). The default
// build therefore runs on any x86-64 and still uses AVX2 where the CPU has it. Disabled when
// the whole library is built for a fixed -march (CDD_NATIVE_ARCH) or outside x86-64/ELF.
#pragma once

#if defined(CDD_MULTIVERSION) && defined(__x86_64__) && defined(__ELF__) && \
    (defined(__GNUC__) || defined(__clang__))
#define CDD_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CDD_HOT
#endif

#if defined(__GNUC__) || defined(__clang__)
#define CDD_RESTRICT __restrict__
#else
#define CDD_RESTRICT
#endif
