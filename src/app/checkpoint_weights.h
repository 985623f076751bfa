// --checkpoint's weights (--weights-from): the TorchScript file supplies the architecture,
// the checkpoint's matched state_dict every parameter and buffer (checkpoint, the default),
// or the model's weights are checked against it (model).
//
// Every rank reads the checkpoint itself with --weights-from checkpoint (README, "Every rank
// gets the same weights": measured against rank 0 reading and broadcasting); the
// consistency check then compares the SHA-256 of what each rank read. With
// --weights-from model only rank 0 reads it, to compare and, at the end, to patch it.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "checkpoint/checkpoint.h"
#include "checkpoint/weights.h"
#include "config/settings.h"
#include "model/adaptable_model.h"

namespace bnadapt::app {

class CheckpointWeights {
 public:
  // `local_size`: the ranks on this host (with --weights-from checkpoint they all read it).
  CheckpointWeights(const config::Settings& st, int rank, int local_size);

  // For model::AdaptableModel: null when this rank does not read a checkpoint. The first
  // copy it sees is matched (Checkpoint::plan on the module's BN buffers), read and checked.
  model::AdaptableModel::Prepare prepare();

  // After the model is loaded: the planned checkpoint (rank 0 keeps it to patch at the end),
  // and where the weights came from, for the log, report and consistency check.
  std::unique_ptr<checkpoint::Checkpoint> takeCheckpoint() { return std::move(ckpt_); }
  // Null when the weights are the model file's own.
  const checkpoint::ModelWeights* loaded() const;

 private:
  void readFor(const torch::jit::Module& module);

  const config::Settings& st_;
  int readers_ = 1;  // ranks of this host reading the checkpoint at the same time
  std::unique_ptr<checkpoint::Checkpoint> ckpt_;
  std::optional<checkpoint::ModelWeights> weights_;
};

}  // namespace bnadapt::app
