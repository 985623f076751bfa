#include "comm/make_communicator.h"

#include "common/error.h"
#if BNADAPT_WITH_NCCL
#include "comm/nccl_communicator.h"
#endif

namespace bnadapt::comm {
namespace {

#if BNADAPT_WITH_NCCL
// NcclCommunicator behind OwnedCommunicator: shutdown() is its destroy().
class OwnedNccl final : public OwnedCommunicator {
 public:
  OwnedNccl(Communicator& bootstrap, int device, double timeout_seconds)
      : nccl_(bootstrap, device, timeout_seconds) {}

  int rank() const override { return nccl_.rank(); }
  int size() const override { return nccl_.size(); }
  int localRank() const override { return nccl_.localRank(); }
  int localSize() const override { return nccl_.localSize(); }
  std::string hostname() const override { return nccl_.hostname(); }
  void allreduceSum(std::vector<double>& data) override { nccl_.allreduceSum(data); }
  void allreduceMax(std::vector<int64_t>& data) override { nccl_.allreduceMax(data); }
  void broadcast(std::string& bytes, int root) override { nccl_.broadcast(bytes, root); }
  [[noreturn]] void abortJob(int code) noexcept override { nccl_.abortJob(code); }
  void shutdown() override { nccl_.destroy(); }
  void abort() noexcept override { nccl_.abort(); }

 private:
  NcclCommunicator nccl_;
};
#endif

}  // namespace

std::unique_ptr<OwnedCommunicator> makeDeviceCommunicator(Backend backend,
                                                          Communicator& bootstrap,
                                                          const DeviceChoice& device,
                                                          double timeout_seconds) {
  if (backend != Backend::kNccl) return nullptr;
#if BNADAPT_WITH_NCCL
  return std::make_unique<OwnedNccl>(bootstrap, device.device, timeout_seconds);
#else
  (void)bootstrap;
  (void)device;
  (void)timeout_seconds;
  fail(ExitCode::kUsage, "--backend nccl: this build has no NCCL (configure with "
       "-DBNADAPT_WITH_NCCL=ON)");
#endif
}

}  // namespace bnadapt::comm
