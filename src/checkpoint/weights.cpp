#include "checkpoint/weights.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <string_view>

#include <ATen/ATen.h>

#include "checkpoint/tensor_bytes.h"
#include "common/error.h"
#include "io/sha256.h"

namespace bnadapt::checkpoint {
namespace {

constexpr size_t kListed = 8;  // keys named in a message, then a count

bool isStatistic(std::string_view name) {
  for (std::string_view leaf : {"running_mean", "running_var", "num_batches_tracked"}) {
    if (name == leaf || (name.ends_with(leaf) && name[name.size() - leaf.size() - 1] == '.')) {
      return true;
    }
  }
  return false;
}

// Every parameter and buffer, by state_dict name.
io::NamedTensors modelTensors(const torch::jit::Module& module) {
  io::NamedTensors out;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) out.emplace_back(p.name, p.value);
  for (const auto& b : module.named_buffers(/*recurse=*/true)) out.emplace_back(b.name, b.value);
  return out;
}

std::string shape(at::IntArrayRef sizes) { return c10::str(sizes); }

std::string keyList(const std::vector<std::string>& keys) {
  std::string s;
  for (size_t i = 0; i < keys.size() && i < kListed; ++i) s += (i ? ", '" : "'") + keys[i] + "'";
  if (keys.size() > kListed) s += " and " + std::to_string(keys.size() - kListed) + " more";
  return s;
}

std::string placeOf(const ModelWeights& w) {
  return "'" + w.file + "' (" + (w.where.dict_path.empty() ? std::string("root dict") :
                                 "dict '" + w.where.dict_path + "'") +
         ", key prefix '" + w.where.prefix + "')";
}

// The model names the dict lacks (the tolerated ones noted in `w`) and its keys the model lacks.
void checkKeySets(const torch::jit::Module& module, const io::NamedTensors& model,
                  const std::map<std::string, at::Tensor>& stored, ModelWeights& w) {
  std::set<std::string> parameters;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) parameters.insert(p.name);
  std::vector<std::string> missing, unexpected;
  std::set<std::string> names;
  for (const auto& [name, t] : model) {
    names.insert(name);
    if (stored.count(name)) continue;
    if (isBatchCounter(name)) {
      ++w.tolerated_missing;
    } else if (!parameters.count(name) && !isStatistic(name)) {
      w.kept_from_model.push_back(name);  // a non-persistent buffer, as far as anyone can tell
    } else {
      missing.push_back(w.where.prefix + name);
    }
  }
  for (const auto& [name, t] : stored) {
    if (!names.count(name)) unexpected.push_back(w.where.prefix + name);
  }
  if (missing.empty() && unexpected.empty()) return;
  std::string what;
  if (!missing.empty()) {
    what = std::to_string(missing.size()) + " key(s) of the model are missing: " + keyList(missing);
  }
  if (!unexpected.empty()) {
    what += (what.empty() ? "" : "; ") + std::to_string(unexpected.size()) +
            " key(s) are not in the model: " + keyList(unexpected);
  }
  fail(ExitCode::kCheckpoint, "checkpoint ", placeOf(w), " does not hold the model's weights: ",
       what, " (a checkpoint of another architecture, or --checkpoint-key picks the wrong dict?)");
}

bool sameKind(c10::ScalarType a, c10::ScalarType b) {
  return at::isFloatingType(a) == at::isFloatingType(b) &&
         (a == c10::kBool) == (b == c10::kBool) && c10::isComplexType(a) == c10::isComplexType(b);
}

uint64_t readMemAvailable() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    unsigned long long kib = 0;
    if (std::sscanf(line.c_str(), "MemAvailable: %llu kB", &kib) == 1) return kib * 1024;
  }
  return UINT64_MAX;  // unknown: do not refuse
}

uint64_t addressSpaceLeft() {
  struct rlimit limit {};
  if (getrlimit(RLIMIT_AS, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return UINT64_MAX;
  std::ifstream in("/proc/self/statm");
  uint64_t pages = 0;
  in >> pages;
  const uint64_t used = pages * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  return limit.rlim_cur > used ? limit.rlim_cur - used : 0;
}

std::string mib(uint64_t bytes) {
  return std::to_string((bytes + (uint64_t{1} << 20) - 1) >> 20) + " MiB";
}

}  // namespace

std::string ModelWeights::describe() const {
  return "checkpoint " + placeOf(*this) + ", " + std::to_string(tensors) + " tensor(s), sha256 " +
         sha256;
}

std::vector<ExpectedBuffer> bnBuffersOf(const torch::jit::Module& module) {
  std::vector<ExpectedBuffer> out;
  for (const auto& b : module.named_buffers(/*recurse=*/true)) {
    if (isStatistic(b.name)) out.push_back({b.name, b.value.sizes().vec(), !isBatchCounter(b.name)});
  }
  return out;
}

ModelWeights checkWeights(const torch::jit::Module& module, const io::NamedTensors& dict,
                          const std::string& file, const KeyMatch& match) {
  ModelWeights w;
  w.file = file;
  w.where = match;
  w.sha256 = weightsSha256(dict);
  std::map<std::string, at::Tensor> stored;
  for (const auto& [name, t] : dict) stored[name] = t;  // a key set twice: its last value
  const io::NamedTensors model = modelTensors(module);
  checkKeySets(module, model, stored, w);
  for (const auto& [name, t] : model) {
    auto it = stored.find(name);
    if (it == stored.end()) continue;  // a tolerated counter
    const std::string key = match.prefix + name;
    const at::Tensor& v = it->second;
    BNA_CHECK(v.sizes() == t.sizes(), ExitCode::kCheckpoint, "checkpoint ", placeOf(w), ": key '",
              key, "' has shape ", shape(v.sizes()), " but the model's '", name, "' has shape ",
              shape(t.sizes()), " (a checkpoint of another architecture?)");
    BNA_CHECK(sameKind(v.scalar_type(), t.scalar_type()), ExitCode::kCheckpoint, "checkpoint ",
              placeOf(w), ": key '", key, "' is ", c10::toString(v.scalar_type()),
              " but the model's '", name, "' is ", c10::toString(t.scalar_type()));
    w.values.emplace_back(name, convertChecked(v, t.scalar_type(), key, file, "a value does not fit the model's"));
  }
  w.tensors = w.values.size();
  return w;
}

void assignWeights(torch::jit::Module& module, const ModelWeights& weights) {
  torch::NoGradGuard no_grad;
  std::map<std::string, const at::Tensor*> values;
  for (const auto& [name, v] : weights.values) values[name] = &v;
  for (auto& [name, t] : modelTensors(module)) {
    auto it = values.find(name);
    if (it != values.end()) t.copy_(*it->second);  // in place: the module keeps its tensors
  }
}

void requireSameWeights(const torch::jit::Module& module, const ModelWeights& weights) {
  std::map<std::string, const at::Tensor*> values;
  for (const auto& [name, v] : weights.values) values[name] = &v;
  for (const auto& [name, t] : modelTensors(module)) {
    auto it = values.find(name);
    if (isStatistic(name) || it == values.end()) continue;
    const at::Tensor a = t.detach().cpu().contiguous();
    const at::Tensor b = it->second->contiguous();
    if (a.nbytes() == b.nbytes() && std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0) {
      continue;
    }
    const double diff = a.numel() == 0 ? 0.0
                                       : (a.to(at::kDouble) - b.to(at::kDouble)).abs().max()
                                             .item<double>();
    fail(ExitCode::kCheckpoint, "--weights-from model: the model's weights differ from checkpoint ",
         placeOf(weights), ", first at key '", weights.where.prefix + name,
         "' (largest absolute difference ", diff, "); the statistics would not belong to the ",
         "checkpoint's weights. Use --weights-from checkpoint (the default) or the model ",
         "exported from this checkpoint");
  }
}

std::string weightsSha256(const io::NamedTensors& tensors) {
  std::vector<const std::pair<std::string, at::Tensor>*> sorted;
  for (const auto& t : tensors) sorted.push_back(&t);
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const auto* a, const auto* b) { return a->first < b->first; });
  io::Sha256 sha;
  for (const auto* named : sorted) {
    const at::Tensor t = named->second.contiguous();
    const std::string head = named->first + '\0' + c10::toString(t.scalar_type()) +
                             shape(t.sizes()) + '\0';
    sha.update(head.data(), head.size());
    sha.update(t.data_ptr(), t.nbytes());
  }
  return sha.hexDigest();
}

void checkMemoryFor(uint64_t bytes, const std::string& file, int readers) {
  // The storage records are read, then each tensor copied out of them: about twice the bytes.
  const uint64_t needed = 2 * bytes;
  const uint64_t host = readers > 1 ? needed * static_cast<uint64_t>(readers) : needed;
  const uint64_t available = readMemAvailable();
  const uint64_t address_space = addressSpaceLeft();
  if (host <= available && needed <= address_space) return;
  const bool by_host = host > available;
  fail(ExitCode::kCheckpoint, "checkpoint '", file, "': reading the state_dict's tensors (",
       mib(bytes), ") needs about ", mib(needed), " on this rank",
       readers > 1 ? ", " + mib(host) + " for the " + std::to_string(readers) +
                         " ranks of this host that read it"
                   : std::string(),
       ", but only ", mib(by_host ? available : address_space), " are available (",
       by_host ? "MemAvailable" : "the address-space limit, ulimit -v", ")");
}

void failAllocation(uint64_t bytes, const std::string& file) {
  fail(ExitCode::kCheckpoint, "checkpoint '", file, "': out of memory reading the state_dict's ",
       "tensors (", mib(bytes), ", about ", mib(2 * bytes), " needed on this rank)");
}

}  // namespace bnadapt::checkpoint
