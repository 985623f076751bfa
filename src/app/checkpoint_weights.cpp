#include "app/checkpoint_weights.h"

namespace bnadapt::app {

CheckpointWeights::CheckpointWeights(const config::Settings& st, int rank, int local_size)
    : st_(st), readers_(st.weights_from == config::WeightsFrom::kCheckpoint ? local_size : 1) {
  if (st.checkpoint_path.empty()) return;
  if (rank == 0 || st.weights_from == config::WeightsFrom::kCheckpoint) {
    ckpt_ = checkpoint::openCheckpoint(st.checkpoint_path, readers_);
  }
}

model::AdaptableModel::Prepare CheckpointWeights::prepare() {
  if (!ckpt_) return nullptr;
  return [this](torch::jit::Module& module) {
    if (!weights_) readFor(module);
    if (weights_ && st_.weights_from == config::WeightsFrom::kCheckpoint) {
      checkpoint::assignWeights(module, *weights_);
    }
  };
}

void CheckpointWeights::readFor(const torch::jit::Module& module) {
  const std::vector<checkpoint::ExpectedBuffer> bn = checkpoint::bnBuffersOf(module);
  if (bn.empty()) return;  // no BN layer: the model's own error follows
  ckpt_->plan(bn, st_.checkpoint_key);
  weights_ = checkpoint::checkWeights(module, ckpt_->readStateDict(readers_), ckpt_->path(),
                                      ckpt_->match());
  if (st_.weights_from == config::WeightsFrom::kModel) {
    checkpoint::requireSameWeights(module, *weights_);
  }
}

const checkpoint::ModelWeights* CheckpointWeights::loaded() const {
  return weights_ && st_.weights_from == config::WeightsFrom::kCheckpoint ? &*weights_ : nullptr;
}

}  // namespace bnadapt::app
