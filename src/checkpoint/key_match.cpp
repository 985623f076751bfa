#include "checkpoint/key_match.h"

#include <unordered_set>

#include "common/error.h"

namespace bnadapt::checkpoint {
namespace {

std::string quoted(const std::string& s) { return "'" + s + "'"; }

std::string describe(const KeyMatch& m) {
  return (m.dict_path.empty() ? std::string("the root dict") : "dict " + quoted(m.dict_path)) +
         " with prefix " + quoted(m.prefix) + " (--checkpoint-key " + quoted(m.id()) + ")";
}

std::string describeAll(const std::vector<KeyMatch>& candidates) {
  std::string list;
  for (const auto& c : candidates) list += (list.empty() ? "" : "; ") + describe(c);
  return list;
}

}  // namespace

KeyMatch matchKeys(const std::vector<KeyedDict>& dicts, const std::vector<ExpectedBuffer>& buffers,
                   const std::string& choice, const std::string& source) {
  std::vector<const ExpectedBuffer*> required;
  std::unordered_set<std::string> expected;
  for (const auto& b : buffers) {
    if (b.required) required.push_back(&b);
    expected.insert(b.name);
  }
  if (required.empty()) fail(ExitCode::kCheckpoint, source, ": no BN buffer to look for");
  const std::string& anchor = required.front()->name;
  const std::string kMean = "running_mean";

  // Every (dict, prefix) under which all required buffers exist by name, classified:
  // exact  = no other BN layer under the prefix; loose = the checkpoint has more there (a
  // bigger network whose blocks reuse the model's layer names, or a model that lost a head);
  // shaped = every buffer also has the model's shape.
  struct Candidate {
    KeyMatch match;
    bool exact = true;
    bool shaped = true;
  };
  std::vector<Candidate> all;
  size_t best_found = 0;  // for the "nothing matches" message
  KeyMatch best;
  std::string best_missing;
  for (size_t d = 0; d < dicts.size(); ++d) {
    const KeyedDict& dict = dicts[d];
    std::unordered_map<std::string, size_t> index;
    for (size_t i = 0; i < dict.keys.size(); ++i) index.emplace(dict.keys[i], i);
    std::unordered_set<std::string> prefixes;
    for (const std::string& k : dict.keys) {
      // A prefix is a whole number of module levels: "" or ending in "." ("ema_" is not a
      // prefix of "ema_bn1.running_mean" for the model's "bn1").
      if (k.size() >= anchor.size() &&
          k.compare(k.size() - anchor.size(), anchor.size(), anchor) == 0 &&
          (k.size() == anchor.size() || k[k.size() - anchor.size() - 1] == '.')) {
        prefixes.insert(k.substr(0, k.size() - anchor.size()));
      }
    }
    for (const std::string& prefix : prefixes) {
      Candidate c{{dict.path, prefix, d}};
      size_t found = 0;
      std::string missing;
      for (const ExpectedBuffer& b : buffers) {
        auto it = index.find(prefix + b.name);
        if (it == index.end()) {
          if (b.required && missing.empty()) missing = prefix + b.name;
          continue;
        }
        found += b.required;
        if (it->second < dict.sizes.size() && dict.sizes[it->second] != b.sizes) c.shaped = false;
      }
      if (!missing.empty()) {
        if (found > best_found) {
          best_found = found;
          best = c.match;
          best_missing = missing;
        }
        continue;
      }
      for (const std::string& k : dict.keys) {
        if (k.size() >= prefix.size() + kMean.size() && k.compare(0, prefix.size(), prefix) == 0 &&
            k.compare(k.size() - kMean.size(), kMean.size(), kMean) == 0 &&
            !expected.count(k.substr(prefix.size()))) {
          c.exact = false;
          break;
        }
      }
      all.push_back(std::move(c));
    }
  }
  auto select = [&](bool exact, bool shaped) {
    std::vector<KeyMatch> out;
    for (const auto& c : all) {
      if ((!exact || c.exact) && (!shaped || c.shaped)) out.push_back(c.match);
    }
    return out;
  };

  if (!choice.empty()) {
    std::vector<KeyMatch> names = select(false, false), chosen;
    for (const auto& c : names) {
      if (c.id() == choice || c.dict_path == choice) chosen.push_back(c);
    }
    if (chosen.size() == 1) return chosen.front();
    fail(ExitCode::kCheckpoint, source, ": --checkpoint-key ", quoted(choice),
         chosen.empty() ? " matches no state_dict holding the model's BN buffers"
                        : " matches more than one state_dict",
         names.empty() ? std::string() : "; candidates: " + describeAll(chosen.empty() ? names : chosen));
  }
  const std::vector<KeyMatch> exact = select(true, true);
  if (exact.size() == 1) return exact.front();
  if (exact.size() > 1) {
    fail(ExitCode::kCheckpoint, source, ": ", exact.size(),
         " state_dicts hold the model's BN buffers; choose one with --checkpoint-key: ",
         describeAll(exact));
  }
  const std::vector<KeyMatch> loose = select(false, true);
  if (loose.size() == 1) return loose.front();
  if (loose.size() > 1) {
    fail(ExitCode::kCheckpoint, source, ": no state_dict matches the model exactly; ",
         loose.size(), " hold its BN buffers among other BN layers (a checkpoint of a bigger ",
         "network?): ", describeAll(loose));
  }
  const std::vector<KeyMatch> named = select(false, false);
  if (named.size() == 1) return named.front();  // plan() names the buffer whose shape differs
  if (named.size() > 1) {
    fail(ExitCode::kCheckpoint, source, ": ", named.size(), " places hold keys named like the ",
         "model's BN buffers but none with the model's shapes (a checkpoint of another model?): ",
         describeAll(named));
  }
  if (best_found > 0) {
    fail(ExitCode::kCheckpoint, source, ": no state_dict holds all BN buffers of the model; ",
         describe(best), " has ", best_found, " of ", required.size(), " but lacks ",
         quoted(best_missing));
  }
  fail(ExitCode::kCheckpoint, source, ": no state_dict holds the model's BN buffers (looked ",
       "for keys ending in ", quoted(anchor), " in ", dicts.size(),
       " dict(s) of tensors); is this a checkpoint of the same model?");
}

}  // namespace bnadapt::checkpoint
