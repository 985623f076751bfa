// Checking and overwriting a tensor inside a checkpoint's raw little-endian bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "checkpoint/key_match.h"

namespace bnadapt::checkpoint {

// The checkpoint's tensor `key` can take `expected`'s values: same shape, and a floating
// dtype for running_mean/var, an integer one for num_batches_tracked. `dtype_name` names the
// stored type in messages. Errors are kCheckpoint and name the key.
void checkCompatible(const std::string& source, const std::string& key,
                     const ExpectedBuffer& expected, const std::vector<int64_t>& sizes,
                     c10::ScalarType dtype, const std::string& dtype_name);

// Writes `values` (converted to `dtype`) into the view (offset, sizes, strides; in elements)
// of `bytes`.
void writeElements(std::string& bytes, c10::ScalarType dtype, int64_t offset,
                   const std::vector<int64_t>& sizes, const std::vector<int64_t>& strides,
                   const at::Tensor& values, const std::string& key, const std::string& source);

}  // namespace bnadapt::checkpoint
