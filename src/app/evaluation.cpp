#include "app/evaluation.h"

#include <algorithm>
#include <string>
#include <vector>

#include "app/agreement.h"
#include "common/error.h"
#include "common/log.h"

namespace bnadapt::app {
namespace {

// Adds one batch's correct and evaluated counts to counts[0] and counts[1].
void countBatch(model::AdaptableModel& model, const data::Batch& batch,
                std::vector<double>& counts) {
  const at::Tensor logits = model.predict(batch.inputs.to(model.device(), model.inputDtype()));
  const int64_t top = batch.labels.max().item<int64_t>();
  BNA_CHECK(top < logits.size(1), ExitCode::kData, "label ", top,
            " but the model outputs ", logits.size(1), " classes");
  const at::Tensor predicted = logits.argmax(1).cpu();
  counts[0] += static_cast<double>(predicted.eq(batch.labels).sum().item<int64_t>());
  counts[1] += static_cast<double>(batch.inputs.size(0));
}

}  // namespace

int evaluate(comm::Communicator& comm, Watchdog& watchdog, model::AdaptableModel& model,
             const data::Dataset& data, const data::BatchPlan& plan,
             const data::LoaderOptions& loading, const char* when, int64_t& samples,
             int64_t& correct) {
  const std::vector<int64_t> mine = plan.batchesOfRank(comm.rank(), comm.size());
  std::vector<double> counts(2, 0.0);  // correct, evaluated: exact in a double below 2^53
  const std::string phase = std::string("evaluating the model ") + when + " adaptation";
  if (int code = agreedPhase(comm, &watchdog, phase.c_str(), [&] {
        data::Loader loader(data, data::batchSamples(plan, data::sampleOrder(plan.used, false, 0),
                                                     mine),
                            mine, loading);
        data::Batch batch;
        for (int64_t b : mine) {
          try {
            loader.next(batch);
            for (const auto& why : batch.skipped) log::warn("skipped (evaluation): ", why);
            if (batch.inputs.size(0) == 0) continue;  // every sample skipped
            countBatch(model, batch, counts);
          } catch (const Error& e) {
            fail(e.code(), "rank ", comm.rank(), ", evaluation batch ", b, ": ", e.what());
          }
          watchdog.kick();
        }
      })) {
    return code;
  }
  watchdog.enter(phase + ": the all-reduce of the counts");
  comm.allreduceSum(counts);
  correct = static_cast<int64_t>(counts[0]);
  samples = static_cast<int64_t>(counts[1]);
  log::info0("top-1 ", when, " adaptation: ", 100.0 * counts[0] / std::max(1.0, counts[1]),
             "% of ", samples, " samples");
  return 0;
}

}  // namespace bnadapt::app
