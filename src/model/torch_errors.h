// Turns LibTorch / TorchScript exceptions into one readable line.
#pragma once

#include <exception>
#include <string>

namespace bnadapt::model {

// The core of the message: without C++ backtrace and TorchScript traceback, first line only.
std::string summarizeTorchError(const std::exception& e);

// Why a TorchScript archive that failed to load may be beyond this LibTorch, with what to do:
// a file format version above the one this LibTorch reads, or records that only PyTorch 2.x
// writes when this LibTorch is 1.x. Empty when the archive shows neither (or is no archive).
std::string newerPyTorchAdvice(const std::string& path);

}  // namespace bnadapt::model
