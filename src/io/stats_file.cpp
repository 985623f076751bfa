#include "io/stats_file.h"

#include <ATen/ATen.h>
#include <ATen/core/Dict.h>
#include <torch/serialize.h>

namespace bnadapt::io {

std::string serializeStats(const NamedTensors& tensors) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, t] : tensors) dict.insert(name, t.detach().clone().cpu());
  const std::vector<char> bytes = torch::pickle_save(c10::IValue(dict));
  return std::string(bytes.begin(), bytes.end());
}

}  // namespace bnadapt::io
