// cdd::Error: the one exception type of libcdd_engine.
//
// Every failure the library detects (bad image views, a corrupt or mismatched engine
// directory, a backend that cannot run) is reported by throwing cdd::Error with a message
// that says what was expected and what was found. The library never aborts or exits.
#pragma once

#include <stdexcept>
#include <string>

namespace cdd {

/// What kind of failure an Error reports (the Python module maps these to exception types).
enum class ErrorCode : int {
    InvalidArgument = 1,  ///< bad input from the caller: image view, option, shape (Python: ValueError)
    NotFound = 2,         ///< a file or directory that must exist does not (Python: FileNotFoundError)
    EngineFormat = 3,     ///< engine.json unreadable, wrong version, hash or shape mismatch (Python: ValueError)
    Unsupported = 4,      ///< the feature was not built in or the machine cannot run it (Python: RuntimeError)
    Backend = 5,          ///< the inference backend failed while loading or running (Python: RuntimeError)
    NonFinite = 6,        ///< the model produced NaN/inf scores: no verdict is given (Python: NonFiniteOutputError)
};

class Error : public std::runtime_error {
public:
    Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
    ErrorCode code() const noexcept { return code_; }

private:
    ErrorCode code_;
};

}  // namespace cdd
