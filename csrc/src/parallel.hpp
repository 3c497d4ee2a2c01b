// parallel_for: split [0, n) into contiguous chunks over `threads` std::threads.
//
// Short-lived threads instead of a pool: one scoring call spends ~0.1-1 s in the network,
// against ~30 us to start a thread, and nothing outlives the call (no state shared between
// Engine users, nothing to leak across the 10,000-call memory test).
#pragma once

#include <algorithm>
#include <cstddef>
#include <exception>
#include <system_error>
#include <thread>
#include <vector>

namespace cdd {
namespace detail {

/// Number of threads for `requested` (0 = all hardware threads), at least 1.
inline int resolve_threads(int requested) {
    if (requested > 0) return requested;
    unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
}

/// Calls f(begin, end) on disjoint chunks covering [0, n); the first exception thrown by
/// any chunk is rethrown in the caller after all threads joined.
template <class F>
void parallel_for(std::size_t n, int threads, F&& f) {
    if (n == 0) return;
    std::size_t t = static_cast<std::size_t>(std::max(1, threads));
    t = std::min(t, n);
    if (t == 1) {
        f(std::size_t(0), n);
        return;
    }
    const std::size_t chunk = (n + t - 1) / t;
    std::vector<std::exception_ptr> errors(t);
    std::vector<std::thread> pool;
    pool.reserve(t - 1);
    std::size_t inline_from = 0;  // chunks that could not get a thread run in the caller
    for (std::size_t i = 1; i < t; ++i) {
        const std::size_t b = i * chunk, e = std::min(n, b + chunk);
        if (b >= e) break;
        try {
            pool.emplace_back([&, i, b, e] {
                try {
                    f(b, e);
                } catch (...) {
                    errors[i] = std::current_exception();
                }
            });
        } catch (const std::system_error&) {  // out of threads: do the rest here
            inline_from = b;
            break;
        }
    }
    try {
        f(std::size_t(0), std::min(n, chunk));
        if (inline_from != 0) f(inline_from, n);
    } catch (...) {
        errors[0] = std::current_exception();
    }
    for (auto& th : pool) th.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace detail
}  // namespace cdd
