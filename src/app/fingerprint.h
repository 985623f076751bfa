// What every rank must agree on before any data moves: settings, the batch plan, the data
// and evaluation data (size, shape, dtype, content hash) and the layer list, one item per
// line, compared with rank 0's.
#pragma once

#include <string>
#include <vector>

#include "config/settings.h"
#include "data/dataset.h"
#include "data/sharding.h"
#include "model/adaptable_model.h"

namespace bnadapt::app {

// This rank's lines; `eval` is null without --eval (eval_plan then unused).
std::vector<std::string> fingerprint(const config::Settings& st, const data::Dataset& data,
                                     const data::BatchPlan& plan, const data::Dataset* eval,
                                     const data::BatchPlan& eval_plan,
                                     const model::AdaptableModel& model);

// The lines joined, each ended by '\n': what rank 0 broadcasts.
std::string joinLines(const std::vector<std::string>& lines);

// Compares this rank's lines with rank 0's (`theirs`, joined); throws kCommunication naming
// the first differing item. Not a collective.
void checkSameAsRankZero(int rank, const std::vector<std::string>& lines,
                         const std::string& theirs);

}  // namespace bnadapt::app
