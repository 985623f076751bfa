#include "data/sharding.h"

#include <algorithm>

#include "common/error.h"
#include "common/hash.h"

namespace bnadapt::data {

int64_t roundBudget(int64_t samples, int64_t batch_size) {
  BNA_CHECK(samples > 0, ExitCode::kUsage, "samples must be positive, got ", samples);
  BNA_CHECK(batch_size > 0, ExitCode::kUsage, "batch size must be positive, got ", batch_size);
  // Nearest multiple, halves up: floor(samples / B + 1/2) * B, without overflow.
  const int64_t q = samples / batch_size;
  const int64_t r = samples % batch_size;
  const int64_t batches = q + (2 * r >= batch_size ? 1 : 0);
  return std::max<int64_t>(1, batches) * batch_size;
}

BatchPlan planBatches(int64_t samples, int64_t batch_size, int64_t available) {
  BNA_CHECK(available > 0, ExitCode::kData, "the data set holds no samples");
  BatchPlan plan;
  plan.requested = samples;
  plan.batch_size = batch_size;
  plan.rounded = roundBudget(samples, batch_size);
  plan.truncated = plan.rounded > available;
  plan.used = std::min(plan.rounded, available);
  plan.num_batches = (plan.used + batch_size - 1) / batch_size;
  return plan;
}

std::pair<int64_t, int64_t> BatchPlan::batchRange(int64_t b) const {
  BNA_ASSERT(b >= 0 && b < num_batches, "batch ", b, " of ", num_batches);
  return {b * batch_size, std::min((b + 1) * batch_size, used)};
}

std::vector<int64_t> BatchPlan::batchesOfRank(int rank, int world_size) const {
  std::vector<int64_t> out;
  for (int64_t b = rank; b < num_batches; b += world_size) out.push_back(b);
  return out;
}

int64_t BatchPlan::samplesOfRank(int rank, int world_size) const {
  int64_t n = 0;
  for (int64_t b : batchesOfRank(rank, world_size)) {
    auto [begin, end] = batchRange(b);
    n += end - begin;
  }
  return n;
}

BatchPlan planAll(int64_t n, int64_t batch_size) {
  BNA_CHECK(n > 0, ExitCode::kData, "the data set holds no samples");
  BNA_CHECK(batch_size > 0, ExitCode::kUsage, "batch size must be positive, got ", batch_size);
  BatchPlan plan;
  plan.requested = plan.rounded = plan.used = n;
  plan.batch_size = batch_size;
  plan.num_batches = (n + batch_size - 1) / batch_size;
  return plan;
}

std::vector<int64_t> sampleOrder(int64_t available, bool shuffle, uint64_t seed) {
  std::vector<int64_t> order(static_cast<size_t>(available));
  for (int64_t i = 0; i < available; ++i) order[static_cast<size_t>(i)] = i;
  if (!shuffle) return order;
  // Fisher-Yates driven by splitmix64; bounded draws by rejection, so every permutation is
  // equally likely and no library distribution (implementation-defined) is involved.
  uint64_t state = seed;
  auto next = [&state] { return splitmix64(state += kSplitmixStep); };
  for (uint64_t i = static_cast<uint64_t>(available); i > 1; --i) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % i;  // draws >= limit would bias
    uint64_t r;
    do r = next(); while (r >= limit);
    std::swap(order[i - 1], order[r % i]);
  }
  return order;
}

std::vector<std::vector<int64_t>> batchSamples(const BatchPlan& plan,
                                               const std::vector<int64_t>& order,
                                               const std::vector<int64_t>& batches) {
  BNA_ASSERT(static_cast<int64_t>(order.size()) >= plan.used, "order of ", order.size(),
             " for ", plan.used, " samples");
  std::vector<std::vector<int64_t>> out;
  out.reserve(batches.size());
  for (int64_t b : batches) {
    const auto [begin, end] = plan.batchRange(b);
    out.emplace_back(order.begin() + begin, order.begin() + end);
  }
  return out;
}

}  // namespace bnadapt::data
