// The --stats-output file: a plain dict {"layer.running_mean": tensor, ...} in torch.save's
// zip format, which Python's torch.load reads with its default weights_only=True (an
// OrderedDict of _rebuild_tensor_v2 tensors: no TorchScript type tags) and
// load_state_dict(strict=False) accepts.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace bnadapt::io {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// The bytes of the file (keys in the given order).
std::string serializeStats(const NamedTensors& tensors);

}  // namespace bnadapt::io
