// The communicator for the statistics all-reduce on the devices, made without the caller
// naming a concrete one (the NCCL one exists only in builds with -DBNADAPT_WITH_NCCL=ON).
#pragma once

#include <memory>

#include "comm/communicator.h"
#include "comm/device_binding.h"

namespace bnadapt::comm {

// A communicator its owner ends explicitly. shutdown(): the orderly end, a collective that
// every rank calls after the last collective succeeded (throws like a collective). abort():
// after a failure, ends whatever work is pending; not a collective, idempotent. Dropped
// without either, its resources are left to the process's exit (no call that can hang).
class OwnedCommunicator : public Communicator {
 public:
  virtual void shutdown() = 0;
  virtual void abort() noexcept = 0;
};

// Collective over `bootstrap` (every rank calls it with the same backend): for
// Backend::kNccl, the NCCL communicator on `device`'s GPU (see NcclCommunicator; its
// all-reduces give up after timeout_seconds, <= 0: never); for Backend::kMpi, nullptr (the
// bootstrap communicator does the all-reduce). kNccl in a build without NCCL is kUsage.
// `bootstrap` must outlive the result.
std::unique_ptr<OwnedCommunicator> makeDeviceCommunicator(Backend backend,
                                                          Communicator& bootstrap,
                                                          const DeviceChoice& device,
                                                          double timeout_seconds);

}  // namespace bnadapt::comm
