// Test-only: the golden vectors of tests/golden/anomaly_map_operators.json (written by
// tests/golden/make_golden.py from the float64 Python reference), read with the library's own
// JSON reader. CMake passes the file's path as CDD_GOLDEN_FILE.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../src/json.hpp"
#include "cdd/kernels.hpp"

#ifndef CDD_GOLDEN_FILE
#error "CDD_GOLDEN_FILE (the path of tests/golden/anomaly_map_operators.json) must be defined"
#endif

namespace golden {

using cdd::json::Value;

inline const Value& root() {
    static const Value v = [] {
        std::ifstream f(CDD_GOLDEN_FILE, std::ios::binary);
        if (!f) throw std::runtime_error(std::string("cannot read the golden vectors ") + CDD_GOLDEN_FILE);
        std::ostringstream ss;
        ss << f.rdbuf();
        return cdd::json::parse(ss.str());
    }();
    return v;
}

inline const Value& at(const Value& v, const std::string& key) {
    const Value* p = v.find(key);
    if (p == nullptr) throw std::runtime_error("golden vectors: missing \"" + key + "\"");
    return *p;
}

inline double number(const Value& v, const std::string& key) {
    const Value& x = at(v, key);
    if (!x.is_number()) throw std::runtime_error("golden vectors: \"" + key + "\" is not a number");
    return x.number;
}

inline std::vector<double> numbers(const Value& v) {
    if (!v.is_array()) throw std::runtime_error("golden vectors: expected an array");
    std::vector<double> out;
    out.reserve(v.array.size());
    for (const Value& x : v.array) {
        if (!x.is_number()) throw std::runtime_error("golden vectors: expected an array of numbers");
        out.push_back(x.number);
    }
    return out;
}

inline std::vector<float> floats(const Value& v) {
    const std::vector<double> d = numbers(v);
    return std::vector<float>(d.begin(), d.end());  // exact: the file holds float32 values
}

/// The features and the expected maps/scores of every (mode, sigma) case.
struct MapCase {
    cdd::kernels::MapSettings settings;
    std::vector<double> maps, scores;
    std::string name;
};
struct Maps {
    int H = 0, W = 0, batch = 0;
    std::vector<std::array<int, 3>> scales;  // (C, h, w)
    std::vector<std::vector<float>> teacher, student;  // per scale, (batch, C, h, w)
    std::vector<MapCase> cases;

    /// FeaturePairs of image 0 (run_batch finds image b at + b * C*h*w).
    std::vector<cdd::kernels::FeaturePair> levels() const {
        std::vector<cdd::kernels::FeaturePair> out;
        for (std::size_t s = 0; s < scales.size(); ++s)
            out.push_back({teacher[s].data(), student[s].data(), cdd::kernels::DType::Float32, scales[s][0],
                           scales[s][1], scales[s][2]});
        return out;
    }
    std::vector<std::pair<int, int>> sizes() const {
        std::vector<std::pair<int, int>> out;
        for (const auto& s : scales) out.emplace_back(s[1], s[2]);
        return out;
    }
};

inline Maps maps() {
    const Value& am = at(root(), "anomaly_map");
    Maps m;
    const std::vector<double> size = numbers(at(am, "image_size"));
    m.H = static_cast<int>(size.at(0));
    m.W = static_cast<int>(size.at(1));
    m.batch = static_cast<int>(number(am, "batch"));
    for (const Value& s : at(am, "scales").array) {
        const std::vector<double> v = numbers(s);
        m.scales.push_back({static_cast<int>(v.at(0)), static_cast<int>(v.at(1)), static_cast<int>(v.at(2))});
    }
    for (const Value& t : at(am, "teacher").array) m.teacher.push_back(floats(t));
    for (const Value& s : at(am, "student").array) m.student.push_back(floats(s));
    for (std::size_t s = 0; s < m.scales.size(); ++s) {
        const std::size_t n = static_cast<std::size_t>(m.batch) * m.scales[s][0] * m.scales[s][1] * m.scales[s][2];
        if (m.teacher.at(s).size() != n || m.student.at(s).size() != n)
            throw std::runtime_error("golden vectors: feature sizes do not match their shapes");
    }
    for (const Value& c : at(am, "cases").array) {
        MapCase k;
        const std::string mode = at(c, "mode").string;
        k.settings.mode = mode == "add" ? cdd::kernels::MapMode::Add : cdd::kernels::MapMode::Mul;
        k.settings.sigma = number(c, "sigma");
        k.settings.truncate = number(am, "truncate");
        k.settings.eps = number(root(), "eps");
        k.maps = numbers(at(c, "maps"));
        k.scores = numbers(at(c, "scores"));
        k.name = mode + " sigma " + std::to_string(k.settings.sigma);
        if (k.maps.size() != static_cast<std::size_t>(m.batch) * m.H * m.W || k.scores.size() != std::size_t(m.batch))
            throw std::runtime_error("golden vectors: map sizes do not match image_size x batch");
        m.cases.push_back(std::move(k));
    }
    return m;
}

/// max |got - want| / max |want|
template <class G>
double rel_to_max(const std::vector<G>& got, const std::vector<double>& want) {
    double m = 0, e = 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
        m = std::max(m, std::fabs(want[i]));
        e = std::max(e, std::fabs(static_cast<double>(got.at(i)) - want[i]));
    }
    if (got.size() != want.size()) return 1e300;
    return m > 0 ? e / m : e;
}

}  // namespace golden
