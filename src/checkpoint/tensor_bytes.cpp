#include "checkpoint/tensor_bytes.h"

#include <cstring>

#include <ATen/ATen.h>

#include "common/error.h"

namespace bnadapt::checkpoint {
namespace {

bool endsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

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
  const bool counter = endsWith(expected.name, "num_batches_tracked");
  const bool ok = counter ? (dtype == c10::kLong || dtype == c10::kInt)
                          : (dtype == c10::kFloat || dtype == c10::kDouble ||
                             dtype == c10::kHalf || dtype == c10::kBFloat16);
  BNA_CHECK(ok, ExitCode::kCheckpoint, source, ": key '", key, "' is stored as ", dtype_name,
            ", expected ", counter ? "int64 or int32" : "float32, float64, float16 or bfloat16");
}

void writeElements(std::string& bytes, c10::ScalarType dtype, int64_t offset,
                   const std::vector<int64_t>& sizes, const std::vector<int64_t>& strides,
                   const at::Tensor& values, const std::string& key, const std::string& source) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  BNA_CHECK(values.numel() == numel, ExitCode::kCheckpoint, source, ": key '", key, "' has ",
            numel, " elements, the new values ", values.numel());
  const at::Tensor v = values.detach().cpu().to(dtype).contiguous();
  const size_t elsize = c10::elementSize(dtype);
  const char* src = static_cast<const char*>(v.data_ptr());
  std::vector<int64_t> index(sizes.size(), 0);
  for (int64_t linear = 0; linear < numel; ++linear) {
    int64_t element = offset;
    for (size_t d = 0; d < sizes.size(); ++d) element += index[d] * strides[d];
    const uint64_t at = static_cast<uint64_t>(element) * elsize;
    BNA_CHECK(element >= 0 && at + elsize <= bytes.size(), ExitCode::kCheckpoint, source,
              ": key '", key, "' reaches beyond its storage");
    std::memcpy(bytes.data() + at, src + linear * elsize, elsize);
    for (size_t d = sizes.size(); d-- > 0;) {  // next multi-index, last dimension fastest
      if (++index[d] < sizes[d]) break;
      index[d] = 0;
    }
  }
}

}  // namespace bnadapt::checkpoint
