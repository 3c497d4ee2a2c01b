#include "json.hpp"

#include <cerrno>
#include <cstdlib>
#include <limits>
#include <stdexcept>

namespace cdd {
namespace json {

const Value* Value::find(const std::string& key) const {
    if (type != Type::Object) return nullptr;
    auto it = object.find(key);
    return it == object.end() ? nullptr : &it->second;
}

const char* type_name(Value::Type t) {
    switch (t) {
        case Value::Type::Null: return "null";
        case Value::Type::Bool: return "bool";
        case Value::Type::Number: return "number";
        case Value::Type::String: return "string";
        case Value::Type::Array: return "array";
        case Value::Type::Object: return "object";
    }
    return "?";
}

namespace {

// At most 64 arrays/objects open at once (the top-level object is level 1), the same rule
// as the Python reader; engine.json nests 4 levels. The bound also keeps the recursion shallow.
constexpr int kMaxDepth = 64;

class Parser {
public:
    explicit Parser(const std::string& s) : s_(s) {}

    Value document() {
        Value v = value(0);
        ws();
        if (i_ != s_.size()) fail("unexpected trailing characters");
        return v;
    }

private:
    [[noreturn]] void fail(const std::string& what) const {
        throw std::runtime_error("invalid JSON: " + what + " at byte " + std::to_string(i_));
    }
    void ws() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
    }
    char peek() {
        if (i_ >= s_.size()) fail("unexpected end of input");
        return s_[i_];
    }
    void expect(const char* word) {
        for (const char* p = word; *p; ++p, ++i_)
            if (i_ >= s_.size() || s_[i_] != *p) fail(std::string("expected '") + word + "'");
    }

    /// `depth`: arrays/objects enclosing this value.
    Value value(int depth) {
        ws();
        Value v;
        const char c = peek();
        if ((c == '{' || c == '[') && depth >= kMaxDepth)
            fail("nesting deeper than " + std::to_string(kMaxDepth) + " arrays/objects");
        if (c == '{') {
            v.type = Value::Type::Object;
            ++i_;
            ws();
            if (peek() == '}') {
                ++i_;
                return v;
            }
            for (;;) {
                ws();
                if (peek() != '"') fail("expected a string key");
                std::string key = string();
                ws();
                if (peek() != ':') fail("expected ':'");
                ++i_;
                v.object[key] = value(depth + 1);
                ws();
                const char d = peek();
                ++i_;
                if (d == '}') break;
                if (d != ',') fail("expected ',' or '}'");
            }
        } else if (c == '[') {
            v.type = Value::Type::Array;
            ++i_;
            ws();
            if (peek() == ']') {
                ++i_;
                return v;
            }
            for (;;) {
                v.array.push_back(value(depth + 1));
                ws();
                const char d = peek();
                ++i_;
                if (d == ']') break;
                if (d != ',') fail("expected ',' or ']'");
            }
        } else if (c == '"') {
            v.type = Value::Type::String;
            v.string = string();
        } else if (c == 't') {
            expect("true");
            v.type = Value::Type::Bool;
            v.boolean = true;
        } else if (c == 'f') {
            expect("false");
            v.type = Value::Type::Bool;
        } else if (c == 'n') {
            expect("null");
        } else if (c == 'N') {  // Python's json.dumps writes NaN / Infinity: accept them as it does
            expect("NaN");
            v.type = Value::Type::Number;
            v.number = std::numeric_limits<double>::quiet_NaN();
        } else if (c == 'I' || (c == '-' && i_ + 1 < s_.size() && s_[i_ + 1] == 'I')) {
            const bool neg = c == '-';
            if (neg) ++i_;
            expect("Infinity");
            v.type = Value::Type::Number;
            v.number = neg ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            v.type = Value::Type::Number;
            v.number = number(v.integer);
        } else {
            // a byte outside printable ASCII is named by its hex value: the message must stay
            // valid UTF-8 text (Python decodes it), whatever the file holds
            const unsigned char u = static_cast<unsigned char>(c);
            if (u < 0x20 || u > 0x7E) {
                static const char* kHex = "0123456789abcdef";
                fail(std::string("unexpected byte 0x") + kHex[u >> 4] + kHex[u & 15]);
            }
            fail(std::string("unexpected character '") + c + "'");
        }
        return v;
    }

    double number(bool& integer) {
        const std::size_t start = i_;
        integer = true;
        if (s_[i_] == '-') ++i_;
        if (i_ + 1 < s_.size() && s_[i_] == '0' && s_[i_ + 1] >= '0' && s_[i_ + 1] <= '9')
            fail("malformed number (leading zero)");  // RFC 8259, as Python's json
        auto digits = [&] {
            const std::size_t b = i_;
            while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
            if (i_ == b) fail("malformed number");
        };
        digits();
        if (i_ < s_.size() && s_[i_] == '.') {
            ++i_;
            integer = false;
            digits();
        }
        if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
            ++i_;
            integer = false;
            if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
            digits();
        }
        const std::string text = s_.substr(start, i_ - start);
        errno = 0;
        char* end = nullptr;
        const double d = std::strtod(text.c_str(), &end);  // engine.json is written with '.' decimals
        if (end != text.c_str() + text.size()) fail("malformed number");
        return d;
    }

    unsigned hex4() {
        if (i_ + 4 > s_.size()) fail("truncated \\u escape");
        unsigned u = 0;
        for (int k = 0; k < 4; ++k) {
            const char h = s_[i_++];
            u <<= 4;
            if (h >= '0' && h <= '9') u |= h - '0';
            else if (h >= 'a' && h <= 'f') u |= h - 'a' + 10;
            else if (h >= 'A' && h <= 'F') u |= h - 'A' + 10;
            else fail("bad \\u escape");
        }
        return u;
    }

    static void utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) {
            out += static_cast<char>(cp);
        } else if (cp < 0x800) {
            out += static_cast<char>(0xC0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (cp >> 18));
            out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        }
    }

    std::string string() {
        ++i_;  // opening quote
        std::string out;
        for (;;) {
            if (i_ >= s_.size()) fail("unterminated string");
            const char c = s_[i_++];
            if (c == '"') break;
            if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
            if (c != '\\') {
                out += c;
                continue;
            }
            if (i_ >= s_.size()) fail("unterminated escape");
            const char e = s_[i_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned cp = hex4();
                    if (cp >= 0xD800 && cp < 0xDC00) {  // surrogate pair
                        if (i_ + 2 > s_.size() || s_[i_] != '\\' || s_[i_ + 1] != 'u') fail("lone surrogate");
                        i_ += 2;
                        const unsigned lo = hex4();
                        if (lo < 0xDC00 || lo > 0xDFFF) fail("bad surrogate pair");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    }
                    utf8(out, cp);
                    break;
                }
                default: fail("unknown escape");
            }
        }
        return out;
    }

    const std::string& s_;
    std::size_t i_ = 0;
};

}  // namespace

Value parse(const std::string& text) { return Parser(text).document(); }

}  // namespace json
}  // namespace cdd
