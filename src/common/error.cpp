#include "common/error.h"

namespace bnadapt {

const char* exitCodeName(ExitCode code) {
  switch (code) {
    case ExitCode::kOk: return "ok";
    case ExitCode::kInternal: return "internal";
    case ExitCode::kUsage: return "usage";
    case ExitCode::kData: return "data";
    case ExitCode::kModel: return "model";
    case ExitCode::kCommunication: return "communication";
    case ExitCode::kOutput: return "output";
    case ExitCode::kCheckpoint: return "checkpoint";
    case ExitCode::kTimeout: return "timeout";
  }
  return "unknown";
}

}  // namespace bnadapt
