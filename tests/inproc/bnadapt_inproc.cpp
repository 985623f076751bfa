// bnadapt_inproc --ranks N <bnadapt_dist options>: the whole pipeline with N ranks as threads
// of this one process (ThreadCommunicator), writing what bnadapt_dist writes. The correctness
// matrix runs most of its world sizes through it (one process start, no MPI launch per case);
// a few cases per feature still run the real executable under mpiexec.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "app/run.h"
#include "app/watchdog.h"
#include "comm/thread_communicator.h"
#include "common/error.h"
#include "common/log.h"
#include "config/config_loader.h"

int main(int argc, char** argv) {
  using namespace bnadapt;
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() < 2 || args[0] != "--ranks" || std::atoi(args[1].c_str()) < 1) {
    std::fprintf(stderr, "usage: bnadapt_inproc --ranks N <bnadapt_dist options>\n");
    return static_cast<int>(ExitCode::kUsage);
  }
  const int ranks = std::atoi(args[1].c_str());
  args.erase(args.begin(), args.begin() + 2);
  config::Settings settings;
  try {
    settings = config::parseSettings(args);
  } catch (const Error& e) {
    std::fprintf(stderr, "bnadapt_inproc: error: %s\n", e.what());
    return static_cast<int>(e.code());
  }
  auto group = std::make_shared<comm::ThreadGroup>(ranks);
  app::configureProcess(settings, comm::ThreadCommunicator(group, 0));
  std::vector<int> codes(static_cast<size_t>(ranks), 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      log::ThreadIdentity identity("inproc", r, ranks);
      comm::ThreadCommunicator comm(group, r);
      app::Watchdog watchdog(static_cast<double>(settings.timeout_seconds));
      try {
        codes[static_cast<size_t>(r)] = static_cast<int>(app::run(settings, comm, watchdog));
      } catch (const std::exception& e) {  // a collective failed: no rank can go on
        log::error(e.what());
        std::_Exit(static_cast<int>(ExitCode::kCommunication));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int code : codes) {
    if (code != codes[0]) {
      std::fprintf(stderr, "bnadapt_inproc: ranks returned different exit codes\n");
      return static_cast<int>(ExitCode::kInternal);
    }
  }
  return codes[0];
}
