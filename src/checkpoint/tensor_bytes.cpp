#include "checkpoint/tensor_bytes.h"

#include <cstdint>
#include <cstring>

#include <ATen/ATen.h>

#include "common/error.h"

namespace bnadapt::checkpoint {
namespace {

std::string shape(const std::vector<int64_t>& sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

}  // namespace

void checkCompatible(const std::string& source, const std::string& key,
                     const ExpectedBuffer& expected, const std::vector<int64_t>& sizes,
                     c10::ScalarType dtype, const std::string& dtype_name) {
  BNA_CHECK(sizes == expected.sizes, ExitCode::kCheckpoint, source, ": key '", key, "' has shape ",
            shape(sizes), " but the model's '", expected.name, "' has shape ",
            shape(expected.sizes));
  const bool counter = isBatchCounter(expected.name);
  const bool ok = counter ? (dtype == c10::kLong || dtype == c10::kInt)
                          : (dtype == c10::kFloat || dtype == c10::kDouble ||
                             dtype == c10::kHalf || dtype == c10::kBFloat16);
  BNA_CHECK(ok, ExitCode::kCheckpoint, source, ": key '", key, "' is stored as ", dtype_name,
            ", expected ", counter ? "int64 or int32" : "float32, float64, float16 or bfloat16");
}

at::Tensor convertChecked(const at::Tensor& values, c10::ScalarType dtype, const std::string& key,
                          const std::string& source, const char* refusal) {
  const at::Tensor v = values.detach().cpu().to(dtype).contiguous();
  if (at::isFloatingType(dtype)) {
    const at::Tensor lost = at::logical_and(at::isfinite(values.detach().cpu()),
                                            at::logical_not(at::isfinite(v)));
    BNA_CHECK(!lost.any().item<bool>(), ExitCode::kCheckpoint, source, ": key '", key,
              "': ", refusal, " ", c10::toString(dtype),
              " (largest magnitude ", values.abs().max().item<double>(), ")");
  }
  return v;
}

void writeElements(std::string& bytes, c10::ScalarType dtype, const std::vector<int64_t>& elements,
                   const at::Tensor& values, const std::string& key, const std::string& source) {
  BNA_CHECK(values.numel() == static_cast<int64_t>(elements.size()), ExitCode::kCheckpoint, source,
            ": key '", key, "' has ", elements.size(), " elements, the new values ", values.numel());
  const at::Tensor v = convertChecked(values, dtype, key, source);
  const size_t elsize = c10::elementSize(dtype);
  const char* src = static_cast<const char*>(v.data_ptr());
  for (size_t i = 0; i < elements.size(); ++i) {
    const uint64_t at = static_cast<uint64_t>(elements[i]) * elsize;
    BNA_CHECK(elements[i] >= 0 && at + elsize <= bytes.size(), ExitCode::kCheckpoint, source,
              ": key '", key, "' reaches beyond its storage");
    std::memcpy(bytes.data() + at, src + i * elsize, elsize);
  }
}

void writeCounter(std::string& bytes, c10::ScalarType dtype, const std::vector<int64_t>& elements,
                  int64_t add, const std::string& key, const std::string& source) {
  BNA_CHECK(elements.size() == 1 && (dtype == c10::kLong || dtype == c10::kInt),
            ExitCode::kCheckpoint, source, ": key '", key, "' is not a single int64/int32 counter");
  const size_t elsize = c10::elementSize(dtype);
  const uint64_t at = static_cast<uint64_t>(elements[0]) * elsize;
  BNA_CHECK(elements[0] >= 0 && at + elsize <= bytes.size(), ExitCode::kCheckpoint, source,
            ": key '", key, "' reaches beyond its storage");
  int64_t old = 0;
  if (dtype == c10::kLong) {
    std::memcpy(&old, bytes.data() + at, 8);
  } else {
    int32_t v32 = 0;
    std::memcpy(&v32, bytes.data() + at, 4);
    old = v32;
  }
  const int64_t now = old + add;
  if (dtype == c10::kLong) {
    std::memcpy(bytes.data() + at, &now, 8);
  } else {
    BNA_CHECK(now <= INT32_MAX, ExitCode::kCheckpoint, source, ": key '", key, "': ", old, " + ",
              add, " does not fit its int32");
    const int32_t v32 = static_cast<int32_t>(now);
    std::memcpy(bytes.data() + at, &v32, 4);
  }
}

}  // namespace bnadapt::checkpoint
