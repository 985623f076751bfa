// In-place edits of a zip archive already written (torch.save's format, as LibTorch's
// PyTorchStreamWriter writes it through miniz): find a member through the end-of-central-
// directory record (ZIP64 included) and overwrite its stored bytes with as many others,
// fixing its CRC-32 wherever the archive states it. Any inconsistency in the structure is an
// internal error (ExitCode::kInternal) naming the file; a failed read or write is kOutput.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace bnadapt::checkpoint::zip {

uint32_t crc32(std::string_view bytes);

// A member of the archive, as its central directory and local header state it.
struct Member {
  std::string name;         // the full name, e.g. "archive/data.pkl"
  uint64_t central_header;  // offset of its 'PK\1\2' entry
  uint64_t local_header;    // offset of its 'PK\3\4' header
  uint64_t data;            // offset of its (stored) data
  uint64_t size;            // compressed size (= size for a stored member)
  uint64_t uncompressed_size;
  uint32_t crc;             // the central directory's
  uint16_t flags;           // general purpose flags; bit 3: a data descriptor follows the data
  uint16_t method;          // 0: stored
};

// The members of the archive open (for reading) at `fd`, in central directory order.
// `file` names it in errors.
std::vector<Member> members(int fd, const std::string& file);

// A member's data (stored members only).
std::string readData(int fd, const std::string& file, const Member& m);

// Checks that the member's CRC-32 matches its data in the central directory, the local header
// (unless bit 3 defers it to the data descriptor) and the data descriptor (where bit 3 is set).
void checkCrc(int fd, const std::string& file, const Member& m);

// Overwrites a stored member's data with `bytes` of the same size, and its CRC-32 in the
// central directory entry, the local header (unless bit 3 defers it: then that field stays
// 0) and the data descriptor (where bit 3 is set). Every place is checked to hold the
// member's old CRC first; nothing is written unless all are consistent. The fd must be open
// for reading and writing.
void overwriteData(int fd, const std::string& file, const Member& m, std::string_view bytes);

}  // namespace bnadapt::checkpoint::zip
