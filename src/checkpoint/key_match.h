// Finds where a model's BN buffers live in a checkpoint: which (nested) dict, under which
// key prefix ("module.", "model.", "" ...). Shared by every checkpoint format.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace bnadapt::checkpoint {

// Whether a buffer or key is a BN layer's batch counter ("...num_batches_tracked"): optional
// in a checkpoint, and patched by adding the batches forwarded now, not overwritten.
inline bool isBatchCounter(std::string_view name) {
  return name.ends_with("num_batches_tracked");
}

// A model buffer the checkpoint must hold, by its name in the model ("layer1.0.bn1.running_mean").
struct ExpectedBuffer {
  std::string name;
  std::vector<int64_t> sizes;
  bool required = true;  // num_batches_tracked is optional: very old checkpoints lack it
};

// One dict of the checkpoint that holds tensors: its path ("model", "" for the root), keys,
// and (when known) each key's shape, parallel to `keys`.
struct KeyedDict {
  std::string path;
  std::vector<std::string> keys;
  std::vector<std::vector<int64_t>> sizes;
};

struct KeyMatch {
  std::string dict_path;
  std::string prefix;      // "" or ending in "." ("module.", "model.backbone.")
  size_t dict_index = 0;   // into the dicts given to matchKeys
  std::string id() const { return dict_path + ":" + prefix; }
};

// The one (dict, prefix) under which every required buffer exists, preferring places with
// no other BN layer under the prefix and with the model's shapes. `choice` (from
// --checkpoint-key) picks among several: "path:prefix", or a dict path alone when that is
// unambiguous. Errors (kCheckpoint) list the candidates, or say what is missing where.
KeyMatch matchKeys(const std::vector<KeyedDict>& dicts, const std::vector<ExpectedBuffer>& buffers,
                   const std::string& choice, const std::string& source);

}  // namespace bnadapt::checkpoint
