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

// Writes `values` (converted to `dtype`; row-major) into the storage elements `elements` of
// `bytes`. Finite values that the dtype cannot hold (float16 overflow) are an error naming
// the key, never an inf in the checkpoint.
void writeElements(std::string& bytes, c10::ScalarType dtype, const std::vector<int64_t>& elements,
                   const at::Tensor& values, const std::string& key, const std::string& source);

// num_batches_tracked: adds `add` to the integer at `elements[0]` (int64 or int32, range-checked).
void writeCounter(std::string& bytes, c10::ScalarType dtype, const std::vector<int64_t>& elements,
                  int64_t add, const std::string& key, const std::string& source);

// Values converted to `dtype`, refusing finite values that become inf/nan there; `refusal`
// starts the message's sentence about them.
at::Tensor convertChecked(const at::Tensor& values, c10::ScalarType dtype, const std::string& key,
                          const std::string& source,
                          const char* refusal = "a new value does not fit the checkpoint's");

}  // namespace bnadapt::checkpoint
