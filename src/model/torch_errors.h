// Turns LibTorch / TorchScript exceptions into one readable line.
#pragma once

#include <exception>
#include <string>

namespace bnadapt::model {

// The core of the message: without C++ backtrace and TorchScript traceback, first line only.
std::string summarizeTorchError(const std::exception& e);

}  // namespace bnadapt::model
