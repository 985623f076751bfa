#include "comm/nccl_errors.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace bnadapt::comm {
namespace {

void expectContains(const std::string& text, const std::string& part) {
  EXPECT_NE(text.find(part), std::string::npos) << "'" << part << "' not in: " << text;
}

TEST(NcclErrorMessage, EveryCodeIsNamedWithAHint) {
  // ncclResult_t of nccl.h (checked against NCCL 2.28's header and ncclGetErrorString in
  // nccl_communicator_test.cpp when built with NCCL).
  struct Case {
    int code;
    const char* name;
    const char* hint;
  };
  const std::vector<Case> cases = {
      {0, "ncclSuccess", "no error"},
      {1, "ncclUnhandledCudaError", "NCCL_DEBUG=WARN"},
      {2, "ncclSystemError", "NCCL_SOCKET_IFNAME"},
      {3, "ncclInternalError", "NCCL_DEBUG=INFO"},
      {4, "ncclInvalidArgument", "report it"},
      {5, "ncclInvalidUsage", "its own GPU"},
      {6, "ncclRemoteError", "another rank failed or was killed"},
      {7, "ncclInProgress", "not completed"},
  };
  for (const auto& c : cases) {
    const std::string msg = ncclErrorMessage(c.code, "");
    EXPECT_EQ(msg.rfind(c.name, 0), 0u) << msg;
    expectContains(msg, c.hint);
    EXPECT_EQ(msg.find("NCCL says"), std::string::npos) << msg;
  }
  expectContains(ncclErrorMessage(2, ""), "network");
  expectContains(ncclErrorMessage(2, ""), "NCCL_DEBUG=WARN");
}

TEST(NcclErrorMessage, AppendsNcclsLastError) {
  const std::string msg = ncclErrorMessage(
      2, "socketStartConnect: Connect to 10.0.0.2<45123> failed : No route to host");
  expectContains(msg, "ncclSystemError");
  expectContains(msg, "; NCCL says: socketStartConnect: Connect to 10.0.0.2<45123> failed");
}

TEST(NcclErrorMessage, UnknownCodes) {
  expectContains(ncclErrorMessage(8, ""), "unknown NCCL result code 8");
  expectContains(ncclErrorMessage(-1, "x"), "unknown NCCL result code -1");
  expectContains(ncclErrorMessage(-1, "x"), "NCCL says: x");
}

}  // namespace
}  // namespace bnadapt::comm
