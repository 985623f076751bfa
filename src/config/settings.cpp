#include "config/settings.h"

namespace bnadapt::config {

const char* weightingName(Weighting w) {
  switch (w) {
    case Weighting::kSamples: return "samples";
    case Weighting::kBatches: return "batches";
  }
  return "unknown";
}

}  // namespace bnadapt::config
