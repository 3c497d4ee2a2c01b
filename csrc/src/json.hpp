// A small JSON reader for engine.json (RFC 8259 values; no dependency). Malformed input,
// more than 64 nested arrays/objects and trailing garbage are errors with a byte offset.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace cdd {
namespace json {

class Value {
public:
    enum class Type { Null, Bool, Number, String, Array, Object };

    Type type = Type::Null;
    bool boolean = false;
    double number = 0.0;
    bool integer = false;  ///< a number written without fraction or exponent ("1", not "1.0" / "1e0")
    std::string string;
    std::vector<Value> array;
    std::map<std::string, Value> object;

    bool is_null() const { return type == Type::Null; }
    bool is_number() const { return type == Type::Number; }
    bool is_string() const { return type == Type::String; }
    bool is_array() const { return type == Type::Array; }
    bool is_object() const { return type == Type::Object; }
    bool is_bool() const { return type == Type::Bool; }
    /// Member `key` of an object, or nullptr when absent or not an object.
    const Value* find(const std::string& key) const;
};

/// Parses a whole document; throws std::runtime_error("... at byte N") on bad input.
Value parse(const std::string& text);

/// Type name for messages: "null", "bool", "number", "string", "array", "object".
const char* type_name(Value::Type t);

}  // namespace json
}  // namespace cdd
