// --eval: top-1 accuracy of the model as it is now (eval mode), before and after adaptation.
#pragma once

#include <cstdint>

#include "app/watchdog.h"
#include "comm/communicator.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/sharding.h"
#include "model/adaptable_model.h"

namespace bnadapt::app {

// Top-1 over `plan`'s batches, spread over the ranks like the calibration batches; `when`
// is "before" or "after" (phase "evaluating the model <when> adaptation", then the
// all-reduce of the counts). `samples` and `correct` are totals over all ranks. Collective;
// returns 0 or the exit code every rank agreed on.
int evaluate(comm::Communicator& comm, Watchdog& watchdog, model::AdaptableModel& model,
             const data::Dataset& data, const data::BatchPlan& plan,
             const data::LoaderOptions& loading, const char* when, int64_t& samples,
             int64_t& correct);

}  // namespace bnadapt::app
