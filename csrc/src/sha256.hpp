// SHA-256 (FIPS 180-4) of a file, to check engine.json's file hashes without a dependency.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cdd {
namespace detail {

class Sha256 {
public:
    Sha256();
    void update(const void* data, std::size_t n);
    std::string hex_digest();  ///< finishes; lower-case hex of the 32-byte digest

private:
    void block(const std::uint8_t* p);
    std::uint32_t h_[8];
    std::uint8_t buf_[64];
    std::size_t buf_len_ = 0;
    std::uint64_t total_ = 0;
};

/// Lower-case hex sha256 of a regular file's bytes and its size; throws cdd::Error(NotFound)
/// when the file cannot be opened, EngineFormat when it is not a regular file (FIFO, device,
/// directory: refused without blocking) or holds more than `max_bytes` bytes (reading stops there).
std::string file_sha256(const std::string& path, std::uint64_t* size = nullptr,
                        std::uint64_t max_bytes = UINT64_MAX);

}  // namespace detail
}  // namespace cdd
