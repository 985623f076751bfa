// Writing precise BN statistics into a user's existing checkpoint, changing nothing else.
//
// Formats: torch.save's zip archive (PyTorch >= 1.6; data.pkl is walked, never executed, and
// only the storage records of the BN buffers are rewritten) and safetensors (only the byte
// ranges of the BN buffers change). Legacy torch.save files are refused with a re-save hint.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/key_match.h"
#include "io/stats_file.h"

namespace bnadapt::checkpoint {

class Checkpoint {
 public:
  virtual ~Checkpoint() = default;

  // Finds where `buffers` live (see matchKeys) and checks shapes and dtypes, before any work.
  virtual void plan(const std::vector<ExpectedBuffer>& buffers, const std::string& key_choice) = 0;

  // Writes the input with `updates` (model buffer name -> new values, any dtype) applied to
  // `path`. Only buffers found by plan() are written; values are converted to the
  // checkpoint's dtype. num_batches_tracked becomes the checkpoint's own count plus
  // `batches_added` (its value in `updates` is not used).
  virtual void write(const std::string& path, const io::NamedTensors& updates,
                     int64_t batches_added) const = 0;

  // One line for the log: format, where the state_dict is, how many buffers will change.
  virtual std::string describe() const = 0;

  // The checkpoint's file.
  virtual const std::string& path() const = 0;

  // After plan(): where the state_dict is (its path, key prefix, --checkpoint-key value).
  virtual const KeyMatch& match() const = 0;

  // After plan(): every tensor of that state_dict under its prefix, by the model's name for
  // it (the key without the prefix), as stored (dtype, shape), contiguous, on the CPU. Reads
  // their bytes now. Errors (kCheckpoint) name the key: a dtype the tool cannot read, a view
  // beyond its storage; a rank without the memory for them is told how much they need.
  // `readers`: the ranks of this host that read it at the same time (they share its memory).
  io::NamedTensors readStateDict(int readers = 1) const;

 private:
  // readStateDict's parts: the bytes those tensors take, and the reading itself.
  virtual uint64_t stateDictBytes() const = 0;
  virtual io::NamedTensors readTensors() const = 0;
};

// Opens `path` by its content. Errors are kCheckpoint and name the file. `readers`: the ranks
// of this host that open it at the same time (a safetensors file is read whole).
std::unique_ptr<Checkpoint> openCheckpoint(const std::string& path, int readers = 1);

}  // namespace bnadapt::checkpoint
