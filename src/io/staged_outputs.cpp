#include "io/staged_outputs.h"

#include <algorithm>
#include <cstdio>

#include "io/file_names.h"
#include "io/sha256.h"

namespace bnadapt::io {

void StagedOutputs::add(const std::string& path, const Writer& write_tmp, int mode) {
  files_.emplace_back(path, write_tmp, mode);
}

std::string StagedOutputs::addWithSidecar(const std::string& path, const Writer& write_tmp,
                                          int mode) {
  add(path, write_tmp, mode);
  const std::string sha256 = sha256FileHex(files_.back().tmpPath());
  const std::string sidecar = sidecarPath(path);
  add(sidecar, bytesWriter(sha256 + "  " + path.substr(path.find_last_of('/') + 1) + "\n"));
  sidecars_.push_back(sidecar);
  return sha256;
}

void StagedOutputs::commitAll() {
  for (auto& file : files_) {
    const std::string sidecar = sidecarPath(file.path());
    if (std::find(sidecars_.begin(), sidecars_.end(), sidecar) != sidecars_.end()) {
      std::remove(sidecar.c_str());
    }
    file.commit();
  }
}

std::vector<std::string> StagedOutputs::paths() const {
  std::vector<std::string> out;
  for (const auto& file : files_) out.push_back(file.path());
  return out;
}

}  // namespace bnadapt::io
