// What this build and this machine offer for CUDA, for the device choice (device_binding.h).
//
// Two implementations, one per build: cuda_devices.cpp (BNADAPT_WITH_NCCL=ON, asks the CUDA
// runtime) and cuda_devices_none.cpp (OFF: no CUDA). No CUDA header here.
#pragma once

#include <string>

#ifndef BNADAPT_WITH_NCCL
#define BNADAPT_WITH_NCCL 0
#endif

namespace bnadapt::comm {

// Set by CMake's BNADAPT_WITH_NCCL: the build has the CUDA runtime and NCCL.
inline constexpr bool kBuildHasCuda = BNADAPT_WITH_NCCL != 0;
inline constexpr bool kBuildHasNccl = BNADAPT_WITH_NCCL != 0;

// The number of CUDA devices this process sees (CUDA_VISIBLE_DEVICES applied), or -1 with
// `reason` set when there is none to use: no driver, a driver older than the runtime
// ("CUDA driver version is insufficient ..."), no device, or no CUDA in this build. Never
// throws and never aborts: on a machine without a GPU this is the normal answer.
int cudaDeviceCountOrReason(std::string& reason);

// Device `device`'s UUID as nvidia-smi prints it, "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx".
// Throws Error(kCommunication) when CUDA cannot say, Error(kInternal) in a build without CUDA.
std::string cudaDeviceUuid(int device);

// The CUDA runtime and NCCL this process loaded, as the start-up log names them, e.g.
// "CUDA runtime 13.2, driver none, NCCL 2.30.7" (with the torch wheel they are the wheel's,
// see CMakeLists.txt); "no CUDA in this build" without. Never throws.
std::string cudaLibraryVersions();

}  // namespace bnadapt::comm
