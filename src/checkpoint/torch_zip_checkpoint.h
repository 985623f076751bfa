// torch.save's zip format, read with LibTorch's PyTorchStreamReader and rewritten record by
// record with PyTorchStreamWriter; data.pkl is copied as it is.
#pragma once

#include <memory>
#include <string>

#include "checkpoint/checkpoint.h"

namespace bnadapt::checkpoint {

std::unique_ptr<Checkpoint> openTorchZip(const std::string& path);

}  // namespace bnadapt::checkpoint
