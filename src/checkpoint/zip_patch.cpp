#include "checkpoint/zip_patch.h"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace bnadapt::checkpoint::zip {
namespace {

constexpr uint32_t kLocalSig = 0x04034b50;       // PK\3\4
constexpr uint32_t kCentralSig = 0x02014b50;     // PK\1\2
constexpr uint32_t kEocdSig = 0x06054b50;        // PK\5\6
constexpr uint32_t kZip64EocdSig = 0x06064b50;   // PK\6\6
constexpr uint32_t kZip64LocatorSig = 0x07064b50;  // PK\6\7
constexpr uint32_t kDescriptorSig = 0x08074b50;  // PK\7\8
constexpr size_t kLocalSize = 30, kCentralSize = 46, kEocdSize = 22, kZip64EocdSize = 56,
                 kZip64LocatorSize = 20;
constexpr size_t kLocalCrc = 14, kCentralCrc = 16;
constexpr uint16_t kDataDescriptorFlag = 1u << 3;

uint16_t u16(const char* p) {
  return static_cast<uint16_t>(static_cast<uint8_t>(p[0]) | static_cast<uint8_t>(p[1]) << 8);
}
uint32_t u32(const char* p) { return u16(p) | static_cast<uint32_t>(u16(p + 2)) << 16; }
uint64_t u64(const char* p) { return u32(p) | static_cast<uint64_t>(u32(p + 4)) << 32; }
std::string le32(uint32_t v) {
  std::string out(4, '\0');
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

[[noreturn]] void corrupt(const std::string& file, const std::string& what) {
  fail(ExitCode::kInternal, "internal error: the zip archive written to ", file,
       " is inconsistent: ", what);
}

// Up to n bytes at offset (fewer only at the end of the file).
std::string readAt(int fd, const std::string& file, uint64_t offset, size_t n) {
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::pread(fd, out.data() + got, n - got, static_cast<off_t>(offset + got));
    if (r < 0 && errno == EINTR) continue;
    BNA_CHECK(r >= 0, ExitCode::kOutput, "reading back ", file, " failed: ", std::strerror(errno));
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  out.resize(got);
  return out;
}
std::string readExactly(int fd, const std::string& file, uint64_t offset, size_t n,
                        const std::string& what) {
  std::string out = readAt(fd, file, offset, n);
  if (out.size() != n) {
    corrupt(file, what + " at offset " + std::to_string(offset) +
                      " runs past the end of the file");
  }
  return out;
}
void writeAt(int fd, const std::string& file, uint64_t offset, std::string_view bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t r = ::pwrite(fd, bytes.data() + done, bytes.size() - done,
                               static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    BNA_CHECK(r > 0, ExitCode::kOutput, "writing ", file, " failed: ",
              r < 0 ? std::strerror(errno) : "no progress");
    done += static_cast<size_t>(r);
  }
}

uint64_t fileSize(int fd, const std::string& file) {
  const off_t end = ::lseek(fd, 0, SEEK_END);
  BNA_CHECK(end >= 0, ExitCode::kOutput, "reading back ", file, " failed: ", std::strerror(errno));
  return static_cast<uint64_t>(end);
}

struct CentralDirectory {
  uint64_t offset = 0, size = 0, entries = 0;
  uint64_t end = 0;  // where the records after it (ZIP64 EOCD or EOCD) start
};

CentralDirectory findCentralDirectory(int fd, const std::string& file) {
  const uint64_t size = fileSize(fd, file);
  if (size < kEocdSize) corrupt(file, "shorter than an end-of-central-directory record");
  const uint64_t tail_start = size - std::min<uint64_t>(size, kEocdSize + 0xffff);
  const std::string tail = readExactly(fd, file, tail_start, size - tail_start, "the tail");
  // The last EOCD whose comment ends exactly at the end of the file.
  size_t at = tail.size() - kEocdSize + 1;
  bool found = false;
  while (at-- > 0) {
    const char* p = tail.data() + at;
    if (u32(p) == kEocdSig && at + kEocdSize + u16(p + 20) == tail.size()) {
      found = true;
      break;
    }
  }
  if (!found) corrupt(file, "no end-of-central-directory record");
  const uint64_t eocd = tail_start + at;
  const char* e = tail.data() + at;
  CentralDirectory cd;
  cd.entries = u16(e + 10);
  cd.size = u32(e + 12);
  cd.offset = u32(e + 16);
  cd.end = eocd;
  if (u16(e + 4) != 0 || u16(e + 6) != 0 || u16(e + 8) != u16(e + 10)) {
    corrupt(file, "a multi-disk archive");
  }
  if (eocd >= kZip64LocatorSize) {
    const std::string loc =
        readExactly(fd, file, eocd - kZip64LocatorSize, kZip64LocatorSize, "the ZIP64 locator");
    if (u32(loc.data()) == kZip64LocatorSig) {
      const uint64_t eocd64 = u64(loc.data() + 8);
      if (eocd - kZip64LocatorSize < kZip64EocdSize ||
          eocd64 > eocd - kZip64LocatorSize - kZip64EocdSize) {
        corrupt(file, "the ZIP64 end-of-central-directory record is not before its locator");
      }
      const std::string z =
          readExactly(fd, file, eocd64, kZip64EocdSize, "the ZIP64 end-of-central-directory record");
      if (u32(z.data()) != kZip64EocdSig) {
        corrupt(file, "no ZIP64 end-of-central-directory record at offset " +
                          std::to_string(eocd64) + ", where its locator points");
      }
      if (u64(z.data() + 24) != u64(z.data() + 32)) corrupt(file, "a multi-disk archive");
      cd.entries = u64(z.data() + 32);
      cd.size = u64(z.data() + 40);
      cd.offset = u64(z.data() + 48);
      cd.end = eocd64;
    }
  }
  if (cd.end == eocd && (cd.entries == 0xffff || cd.size == 0xffffffff || cd.offset == 0xffffffff)) {
    corrupt(file, "ZIP64 values in the end-of-central-directory record, but no ZIP64 locator");
  }
  if (cd.offset > cd.end || cd.size > cd.end - cd.offset) {
    corrupt(file, "the central directory (offset " + std::to_string(cd.offset) + ", " +
                      std::to_string(cd.size) + " bytes) does not end before its end records");
  }
  return cd;
}

// Where the data descriptor's CRC-32 of m is: after the data, after an optional signature.
uint64_t descriptorCrcOffset(int fd, const std::string& file, const Member& m) {
  const uint64_t at = m.data + m.size;
  const std::string d = readExactly(fd, file, at, 8, "the data descriptor of " + m.name);
  if (u32(d.data()) == kDescriptorSig && u32(d.data() + 4) == m.crc) return at + 4;
  if (u32(d.data()) == m.crc) return at;  // the signature is optional
  corrupt(file, "the data descriptor of '" + m.name + "' (offset " + std::to_string(at) +
                    ") does not hold the central directory's CRC-32");
}

}  // namespace

uint32_t crc32(std::string_view bytes) {
  uLong crc = ::crc32(0L, Z_NULL, 0);
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    const uInt n = static_cast<uInt>(std::min<size_t>(left, 1u << 30));
    crc = ::crc32(crc, reinterpret_cast<const Bytef*>(p), n);
    p += n;
    left -= n;
  }
  return static_cast<uint32_t>(crc);
}

std::vector<Member> members(int fd, const std::string& file) {
  const CentralDirectory cd = findCentralDirectory(fd, file);
  const std::string dir = readExactly(fd, file, cd.offset, cd.size, "the central directory");
  std::vector<Member> out;
  size_t pos = 0;
  for (uint64_t i = 0; i < cd.entries; ++i) {
    if (dir.size() - pos < kCentralSize || u32(dir.data() + pos) != kCentralSig) {
      corrupt(file, "central directory entry " + std::to_string(i) + " of " +
                        std::to_string(cd.entries) + " is missing or has no signature");
    }
    const char* c = dir.data() + pos;
    Member m;
    m.central_header = cd.offset + pos;
    m.flags = u16(c + 8);
    m.method = u16(c + 10);
    m.crc = u32(c + kCentralCrc);
    m.size = u32(c + 20);
    m.uncompressed_size = u32(c + 24);
    const size_t name_len = u16(c + 28), extra_len = u16(c + 30), comment_len = u16(c + 32);
    uint32_t disk = u16(c + 34);
    m.local_header = u32(c + 42);
    if (dir.size() - pos - kCentralSize < name_len + extra_len + comment_len) {
      corrupt(file, "central directory entry " + std::to_string(i) + " runs past its end");
    }
    m.name.assign(c + kCentralSize, name_len);
    // The ZIP64 extra field holds, in this order, the values whose 32-bit field is all ones.
    const char* x = c + kCentralSize + name_len;
    for (size_t xp = 0; xp + 4 <= extra_len;) {
      const uint16_t id = u16(x + xp), len = u16(x + xp + 2);
      if (xp + 4 + len > extra_len) corrupt(file, "an extra field of '" + m.name + "' runs past its end");
      if (id == 0x0001) {
        const char* z = x + xp + 4;
        size_t zp = 0;
        auto take = [&](uint64_t& value, size_t width) {
          if (zp + width > len) corrupt(file, "the ZIP64 extra field of '" + m.name + "' is short");
          value = width == 8 ? u64(z + zp) : u32(z + zp);
          zp += width;
        };
        if (m.uncompressed_size == 0xffffffff) take(m.uncompressed_size, 8);
        if (m.size == 0xffffffff) take(m.size, 8);
        if (m.local_header == 0xffffffff) take(m.local_header, 8);
        if (disk == 0xffff) {
          uint64_t d = 0;
          take(d, 4);
          disk = static_cast<uint32_t>(d);
        }
      }
      xp += 4 + len;
    }
    if (m.size == 0xffffffff || m.uncompressed_size == 0xffffffff ||
        m.local_header == 0xffffffff) {
      corrupt(file, "'" + m.name + "' needs ZIP64 values its central directory entry lacks");
    }
    if (disk != 0) corrupt(file, "'" + m.name + "' is on another disk");
    pos += kCentralSize + name_len + extra_len + comment_len;

    const std::string local =
        readExactly(fd, file, m.local_header, kLocalSize, "the local header of " + m.name);
    if (u32(local.data()) != kLocalSig) {
      corrupt(file, "no local header at offset " + std::to_string(m.local_header) + ", where '" +
                        m.name + "''s central directory entry points");
    }
    const size_t local_name = u16(local.data() + 26), local_extra = u16(local.data() + 28);
    const std::string name = readExactly(fd, file, m.local_header + kLocalSize, local_name,
                                         "the local header of " + m.name);
    if (name != m.name || u16(local.data() + 8) != m.method ||
        (u16(local.data() + 6) & kDataDescriptorFlag) != (m.flags & kDataDescriptorFlag)) {
      corrupt(file, "the local header at offset " + std::to_string(m.local_header) +
                        " does not match the central directory entry of '" + m.name + "'");
    }
    m.data = m.local_header + kLocalSize + local_name + local_extra;
    if (m.data > cd.offset || m.size > cd.offset - m.data) {
      corrupt(file, "the data of '" + m.name + "' runs into the central directory");
    }
    out.push_back(std::move(m));
  }
  if (pos != dir.size()) {
    corrupt(file, "the central directory holds " + std::to_string(dir.size() - pos) +
                      " bytes after its " + std::to_string(cd.entries) + " entries");
  }
  return out;
}

std::string readData(int fd, const std::string& file, const Member& m) {
  if (m.method != 0 || m.size != m.uncompressed_size) {
    corrupt(file, "'" + m.name + "' is compressed (method " + std::to_string(m.method) + ")");
  }
  return readExactly(fd, file, m.data, m.size, "the data of " + m.name);
}

void checkCrc(int fd, const std::string& file, const Member& m) {
  const uint32_t actual = crc32(readData(fd, file, m));
  if (actual != m.crc) corrupt(file, "the CRC-32 of '" + m.name + "' does not match its data");
  const uint32_t local =
      u32(readExactly(fd, file, m.local_header + kLocalCrc, 4, "a local header").data());
  if (m.flags & kDataDescriptorFlag) {
    descriptorCrcOffset(fd, file, m);  // fails unless it holds m.crc
    if (local != 0 && local != m.crc) corrupt(file, "the local header CRC-32 of '" + m.name + "'");
  } else if (local != m.crc) {
    corrupt(file, "the local header CRC-32 of '" + m.name + "' does not match its data");
  }
}

void overwriteData(int fd, const std::string& file, const Member& m, std::string_view bytes) {
  if (bytes.size() != m.size) {
    fail(ExitCode::kInternal, "internal error: ", bytes.size(), " bytes cannot replace the ",
         m.size, " of '", m.name, "' in ", file);
  }
  // Check every place that states the CRC before writing any.
  const std::string old = readData(fd, file, m);
  if (crc32(old) != m.crc) corrupt(file, "the CRC-32 of '" + m.name + "' does not match its data");
  const uint32_t local =
      u32(readExactly(fd, file, m.local_header + kLocalCrc, 4, "a local header").data());
  const bool deferred = (m.flags & kDataDescriptorFlag) != 0;
  // With bit 3 set the local header's CRC is 0 (miniz) or, from some writers, the real one.
  const bool fix_local = deferred ? local != 0 : true;
  if (fix_local && local != m.crc) {
    corrupt(file, "the local header CRC-32 of '" + m.name + "' differs from the central directory's");
  }
  const uint64_t descriptor = deferred ? descriptorCrcOffset(fd, file, m) : 0;
  const uint32_t crc = crc32(bytes);
  writeAt(fd, file, m.data, bytes);
  writeAt(fd, file, m.central_header + kCentralCrc, le32(crc));
  if (fix_local) writeAt(fd, file, m.local_header + kLocalCrc, le32(crc));
  if (deferred) writeAt(fd, file, descriptor, le32(crc));
}

}  // namespace bnadapt::checkpoint::zip
