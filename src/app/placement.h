// Where this rank computes and how the ranks all-reduce: the device (local rank -> GPU), the
// backend, and the process-wide switches that go with a GPU (TF32 off).
#pragma once

#include <string>

#include <c10/core/Device.h>

#include "app/watchdog.h"
#include "comm/communicator.h"
#include "comm/device_binding.h"
#include "config/settings.h"

namespace bnadapt::app {

struct Placement {
  comm::DeviceChoice device;
  comm::Backend backend = comm::Backend::kMpi;
  c10::Device torch_device = c10::Device(c10::kCPU);
  std::string uuid;  // the GPU's, for the log
  bool onGpu() const { return device.kind == comm::DeviceChoice::kCuda; }
};

// Chooses the device and backend on every rank (phase "choosing the device"), checks that
// all ranks chose the same kind and that no two share a GPU unless allowed, and logs the
// choice. Collective; returns 0 or the exit code every rank returns.
int choosePlacement(const config::Settings& st, comm::Communicator& comm, Watchdog& watchdog,
                    Placement& out);

}  // namespace bnadapt::app
