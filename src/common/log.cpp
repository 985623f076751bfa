#include "common/log.h"

#include <cstdio>
#include <mutex>

namespace bnadapt::log {
namespace {
std::mutex g_mu;
std::string g_prefix = "[bnadapt_dist]";
int g_rank = 0;
}  // namespace

void setIdentity(const std::string& host, int rank, int size) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_prefix = "[" + host + " r" + std::to_string(rank) + "/" + std::to_string(size) + "]";
  g_rank = rank;
}

int rank() { return g_rank; }

void write(Level level, const std::string& line) {
  static const char* const kTags[] = {"", "warning: ", "error: "};
  std::lock_guard<std::mutex> lock(g_mu);
  std::string text = g_prefix + " " + kTags[static_cast<int>(level)] + line + "\n";
  FILE* out = level == Level::kInfo ? stdout : stderr;
  std::fwrite(text.data(), 1, text.size(), out);
  std::fflush(out);
}

}  // namespace bnadapt::log
