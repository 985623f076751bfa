#include "model/torch_errors.h"

#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/versions.h>
#include <c10/util/Exception.h>

#include "common/error.h"
#include "common/torch_compat.h"

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

std::string newerPyTorchAdvice(const std::string& path) {
  uint64_t version = 0;
  bool has_2x_records = false;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    version = reader.version();
    has_2x_records = reader.hasRecord(".data/serialization_id");
  } catch (const std::exception& e) {
    // The reader refuses a format version above its maximum; the message names both.
    const std::string msg = summarizeTorchError(e);
    if (msg.find("maximum supported version") == std::string::npos) return "";
    version = caffe2::serialize::kMaxSupportedFileFormatVersion + 1;
  }
  std::string why;
  if (version > caffe2::serialize::kMaxSupportedFileFormatVersion) {
    why = detail::concat("its file format version ", version, " is above ",
                         caffe2::serialize::kMaxSupportedFileFormatVersion, ", the newest that ");
  } else if (has_2x_records && TORCH_VERSION_MAJOR < 2) {
    why = "it was saved by PyTorch 2.x (it has the .data/serialization_id record), newer than ";
  } else {
    return "";
  }
  return detail::concat("; ", why, "this build's LibTorch ", compat::kTorchVersion,
                        " reads. Rebuild bnadapt_dist against a LibTorch at least as new as the "
                        "PyTorch that saved it (launch/install_deps.sh and the default build use "
                        "PyPI's torch wheel), or re-export the model with torch.jit.save from "
                        "PyTorch ", TORCH_VERSION_MAJOR, ".", TORCH_VERSION_MINOR);
}

}  // namespace bnadapt::model
