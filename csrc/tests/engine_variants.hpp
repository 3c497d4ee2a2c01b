// Test helper: copies of an engine directory with one thing broken. Model files are
// symlinked (no 20 MB copies); engine.json is re-written through the library's own JSON
// reader and the small writer below.
#pragma once

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include "../src/json.hpp"

namespace variants {

namespace fs = std::filesystem;
using cdd::json::Value;

inline void write_json(std::ostream& o, const Value& v) {
    switch (v.type) {
        case Value::Type::Null: o << "null"; break;
        case Value::Type::Bool: o << (v.boolean ? "true" : "false"); break;
        case Value::Type::Number: {
            char buf[32];
            std::snprintf(buf, sizeof buf, "%.17g", v.number);
            o << buf;
            break;
        }
        case Value::Type::String: {
            o << '"';
            for (char c : v.string) {
                if (c == '"' || c == '\\') o << '\\';
                o << c;
            }
            o << '"';
            break;
        }
        case Value::Type::Array: {
            o << '[';
            for (std::size_t i = 0; i < v.array.size(); ++i) {
                if (i) o << ',';
                write_json(o, v.array[i]);
            }
            o << ']';
            break;
        }
        case Value::Type::Object: {
            o << '{';
            bool first = true;
            for (const auto& kv : v.object) {
                if (!first) o << ',';
                first = false;
                Value k;
                k.type = Value::Type::String;
                k.string = kv.first;
                write_json(o, k);
                o << ':';
                write_json(o, kv.second);
            }
            o << '}';
            break;
        }
    }
}

inline Value read_manifest(const std::string& dir) {
    std::ifstream in(dir + "/engine.json");
    std::stringstream ss;
    ss << in.rdbuf();
    return cdd::json::parse(ss.str());
}

inline Value number(double d) {
    Value v;
    v.type = Value::Type::Number;
    v.number = d;
    return v;
}

inline Value string(const std::string& s) {
    Value v;
    v.type = Value::Type::String;
    v.string = s;
    return v;
}

/// A fresh directory `root/name` holding symlinks to the model files of `src` (except
/// those named in `skip`) and engine.json as `edit` leaves the parsed original.
inline std::string make(const std::string& src, const std::string& root, const std::string& name,
                        const std::function<void(Value&)>& edit, const std::vector<std::string>& skip = {}) {
    const fs::path dir = fs::path(root) / name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    for (const auto& e : fs::directory_iterator(src)) {
        const std::string f = e.path().filename().string();
        if (f == "engine.json" || std::find(skip.begin(), skip.end(), f) != skip.end()) continue;
        fs::create_symlink(fs::absolute(e.path()), dir / f);
    }
    Value m = read_manifest(src);
    edit(m);
    std::ofstream out(dir / "engine.json");
    write_json(out, m);
    return dir.string();
}

}  // namespace variants
