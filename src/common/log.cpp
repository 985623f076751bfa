#include "common/log.h"

#include <cstdio>
#include <mutex>
#include <utility>

namespace bnadapt::log {
namespace {
std::mutex g_mu;
std::string g_prefix = "[bnadapt_dist]";  // guarded by g_mu
int g_rank = 0;                             // guarded by g_mu
// A ThreadIdentity's; empty prefix: the process's.
thread_local std::string t_prefix;
thread_local int t_rank = -1;

std::string prefixOf(const std::string& host, int rank, int size) {
  return "[" + host + " r" + std::to_string(rank) + "/" + std::to_string(size) + "]";
}
}  // namespace

void setIdentity(const std::string& host, int rank, int size) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_prefix = prefixOf(host, rank, size);
  g_rank = rank;
}

ThreadIdentity::ThreadIdentity(const std::string& host, int rank, int size)
    : saved_prefix_(std::move(t_prefix)), saved_rank_(t_rank) {
  t_prefix = prefixOf(host, rank, size);
  t_rank = rank;
}

ThreadIdentity::~ThreadIdentity() {
  t_prefix = std::move(saved_prefix_);
  t_rank = saved_rank_;
}

int rank() {
  if (t_rank >= 0) return t_rank;
  std::lock_guard<std::mutex> lock(g_mu);
  return g_rank;
}

void write(Level level, const std::string& line) {
  static const char* const kTags[] = {"", "warning: ", "error: "};
  std::lock_guard<std::mutex> lock(g_mu);
  std::string text = (t_prefix.empty() ? g_prefix : t_prefix) + " " +
                     kTags[static_cast<int>(level)] + line + "\n";
  FILE* out = level == Level::kInfo ? stdout : stderr;
  std::fwrite(text.data(), 1, text.size(), out);
  std::fflush(out);
}

}  // namespace bnadapt::log
