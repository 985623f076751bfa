#include "model/torch_errors.h"

#include <c10/util/Exception.h>

namespace bnadapt::model {

std::string summarizeTorchError(const std::exception& e) {
  std::string msg;
  if (const auto* c10e = dynamic_cast<const c10::Error*>(&e)) {
    msg = c10e->what_without_backtrace();
  } else {
    msg = e.what();
  }
  // TorchScript interpreter errors end with "RuntimeError: <the real message>".
  for (const char* marker : {"RuntimeError: ", "ValueError: ", "Exception: "}) {
    const auto pos = msg.rfind(marker);
    if (pos != std::string::npos) {
      msg = msg.substr(pos + std::string(marker).size());
      break;
    }
  }
  while (!msg.empty() && (msg.front() == '\n' || msg.front() == ' ')) msg.erase(0, 1);
  const auto nl = msg.find('\n');
  if (nl != std::string::npos) msg.resize(nl);
  return msg.empty() ? std::string("unknown error") : msg;
}

}  // namespace bnadapt::model
