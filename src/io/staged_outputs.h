// A job's outputs, written all or none: each is staged complete on disk (io::StagedFile)
// before the first one is put in place, then all are committed in the order staged.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "io/files.h"

namespace bnadapt::io {

class StagedOutputs {
 public:
  using Writer = std::function<void(const std::string& tmp_path)>;

  // Stages `path`, written by `write_tmp` (see StagedFile; `mode` -1: 0666 & ~umask).
  void add(const std::string& path, const Writer& write_tmp, int mode = -1);

  // Stages `path`, then its sidecar "<path>.sha256" holding "<sha256>  <file name>\n" of the
  // staged bytes, in sha256sum's format. Returns the hex digest.
  std::string addWithSidecar(const std::string& path, const Writer& write_tmp, int mode = -1);

  // Puts every staged file in place, in the order staged. A file's old sidecar is removed
  // just before the file is committed, so that no stale .sha256 ever sits beside a new
  // file (its new sidecar follows it).
  void commitAll();

  // The targets, in the order staged.
  std::vector<std::string> paths() const;

 private:
  std::vector<StagedFile> files_;
  std::vector<std::string> sidecars_;
};

}  // namespace bnadapt::io
