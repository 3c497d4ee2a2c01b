// A minimal test harness for the C++ tests (no framework dependency): CHECK records a
// failure and goes on, REQUIRE_THROWS checks that a statement throws cdd::Error with an
// expected code and message fragment, and main() returns the failure count (ctest: 0 = pass).
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "cdd/error.hpp"

namespace check {

inline int& failures() {
    static int n = 0;
    return n;
}

inline void fail(const char* file, int line, const std::string& what) {
    std::fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, what.c_str());
    ++failures();
}

struct Case {
    const char* name;
    std::function<void()> fn;
};

inline std::vector<Case>& cases() {
    static std::vector<Case> c;
    return c;
}

struct Register {
    Register(const char* name, std::function<void()> fn) { cases().push_back({name, std::move(fn)}); }
};

/// Whether a case name passes a filter: "a|b" keeps names containing a or b, "!a|b" keeps the
/// others, "" keeps all (ctest runs subsets under different sanitizer options).
inline bool selected(const std::string& name, std::string filter) {
    if (filter.empty()) return true;
    const bool negate = filter[0] == '!';
    if (negate) filter.erase(0, 1);
    bool hit = false;
    for (std::size_t b = 0, e; !hit && b <= filter.size(); b = e + 1) {
        e = filter.find('|', b);
        if (e == std::string::npos) e = filter.size();
        hit = e > b && name.find(filter.substr(b, e - b)) != std::string::npos;
    }
    return hit != negate;
}

/// Runs every case selected by the filter in argv[1] (see selected()); an escaping exception
/// is a failure.
inline int run_all(int argc, char** argv) {
    const std::string filter = argc > 1 ? argv[1] : "";
    for (const Case& c : cases()) {
        if (!selected(c.name, filter)) continue;
        const int before = failures();
        try {
            c.fn();
        } catch (const std::exception& e) {
            fail(c.name, 0, std::string("unexpected exception: ") + e.what());
        }
        std::printf("[%s] %s\n", failures() == before ? "  ok  " : " FAIL ", c.name);
    }
    std::printf("%d failure(s)\n", failures());
    return failures() == 0 ? 0 : 1;
}

}  // namespace check

#define CDD_CAT2(a, b) a##b
#define CDD_CAT(a, b) CDD_CAT2(a, b)
#define TEST_CASE(name)                                                              \
    static void CDD_CAT(test_fn_, __LINE__)();                                       \
    static check::Register CDD_CAT(test_reg_, __LINE__)(name, CDD_CAT(test_fn_, __LINE__)); \
    static void CDD_CAT(test_fn_, __LINE__)()

#define CHECK(cond)                                                   \
    do {                                                              \
        if (!(cond)) check::fail(__FILE__, __LINE__, #cond);          \
    } while (0)

#define CHECK_MSG(cond, msg)                                                           \
    do {                                                                               \
        if (!(cond)) check::fail(__FILE__, __LINE__, std::string(#cond) + ": " + (msg)); \
    } while (0)

/// |got - want| <= rtol * scale, with `scale` the reference's magnitude (e.g. its max |value|).
#define CHECK_CLOSE(got, want, rtol, scale)                                                                  \
    do {                                                                                                     \
        const double g_ = (got), w_ = (want), s_ = (scale);                                                  \
        if (!(std::fabs(g_ - w_) <= (rtol) * s_))                                                            \
            check::fail(__FILE__, __LINE__,                                                                  \
                        std::string(#got " = ") + std::to_string(g_) + ", expected " + std::to_string(w_) + \
                            " (rel. err " + std::to_string(std::fabs(g_ - w_) / s_) + ")");                 \
    } while (0)

#define REQUIRE_THROWS(stmt, code_, fragment)                                                          \
    do {                                                                                               \
        bool thrown_ = false;                                                                          \
        try {                                                                                          \
            stmt;                                                                                      \
        } catch (const cdd::Error& e_) {                                                               \
            thrown_ = true;                                                                            \
            const std::string msg_ = e_.what();                                                       \
            if (e_.code() != (code_))                                                                  \
                check::fail(__FILE__, __LINE__, std::string(#stmt " threw code ") +                    \
                                                    std::to_string(static_cast<int>(e_.code())) + ": " + msg_); \
            if (msg_.find(fragment) == std::string::npos)                                              \
                check::fail(__FILE__, __LINE__,                                                        \
                            std::string(#stmt " message lacks \"") + (fragment) + "\": " + msg_);      \
        } catch (const std::exception& e_) {                                                           \
            thrown_ = true;                                                                            \
            check::fail(__FILE__, __LINE__, std::string(#stmt " threw a non-cdd exception: ") + e_.what()); \
        }                                                                                              \
        if (!thrown_) check::fail(__FILE__, __LINE__, #stmt " did not throw");                        \
    } while (0)
