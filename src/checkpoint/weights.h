// The weights a checkpoint gives the model (--weights-from checkpoint, the default with
// --checkpoint), or checks it has (--weights-from model).
//
// The TorchScript file supplies the architecture; the matched state_dict supplies every
// parameter and buffer. Keys are compared both ways (model names against the dict's keys
// under the matched prefix): a key either side lacks is an error naming it, except two
// tolerated gaps where the model keeps its own values: a num_batches_tracked the dict lacks
// (checkpoints of PyTorch < 0.4.1), and a buffer other than BN statistics that the dict
// lacks (TorchScript keeps non-persistent buffers, register_buffer(..., persistent=False),
// as ordinary ones, and state_dicts never hold them). Shapes must be equal; values are
// converted to the model's dtype, refusing a finite value the model's dtype cannot hold.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/script.h>

#include "checkpoint/key_match.h"
#include "io/stats_file.h"

namespace bnadapt::checkpoint {

// A checkpoint's state_dict checked against a model and converted to its dtypes.
struct ModelWeights {
  std::string file;       // the checkpoint
  KeyMatch where;         // dict path and key prefix in it
  io::NamedTensors values;  // model name -> value in the model's dtype (tolerated gaps left out)
  std::string sha256;     // of the stored tensors (see weightsSha256)
  size_t tensors = 0;            // loaded into the model
  size_t tolerated_missing = 0;  // num_batches_tracked the dict lacks
  std::vector<std::string> kept_from_model;  // other buffers the dict lacks (non-persistent)
  // "checkpoint 'f.pt', dict 'model', prefix 'module.', 161 tensors, sha256 ab12..."
  std::string describe() const;
};

// The BN buffers of `module` (every "...running_mean", "...running_var",
// "...num_batches_tracked" buffer; the counters optional), for Checkpoint::plan.
std::vector<ExpectedBuffer> bnBuffersOf(const torch::jit::Module& module);

// Checks `dict` (model name -> stored tensor, from Checkpoint::readStateDict) against every
// parameter and buffer of `module` and converts it. Errors are kCheckpoint and name `file`
// and the keys: missing or unexpected keys (listed), a shape, a dtype kind, an overflow.
ModelWeights checkWeights(const torch::jit::Module& module, const io::NamedTensors& dict,
                          const std::string& file, const KeyMatch& where);

// Copies `weights` into `module`'s parameters and buffers, in place.
void assignWeights(torch::jit::Module& module, const ModelWeights& weights);

// --weights-from model: the module's parameters and buffers must equal `weights` (BN
// running statistics and counters excepted: they are about to be recomputed). Throws
// kCheckpoint naming the first differing key and its largest absolute difference.
void requireSameWeights(const torch::jit::Module& module, const ModelWeights& weights);

// SHA-256 over the tensors in name order: name, dtype, shape and the raw little-endian bytes
// of each. Equal on ranks that read the same values.
std::string weightsSha256(const io::NamedTensors& tensors);

// Before reading `bytes` of tensors from `file`: refuses (kCheckpoint) when this process
// cannot get that much memory, saying what it needs: against MemAvailable shared by the
// `readers` ranks of this host that read it at the same time, and the address-space limit.
void checkMemoryFor(uint64_t bytes, const std::string& file, int readers = 1);
// A failed allocation while reading them: kCheckpoint saying what they need.
[[noreturn]] void failAllocation(uint64_t bytes, const std::string& file);

}  // namespace bnadapt::checkpoint
