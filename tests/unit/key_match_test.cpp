#include "checkpoint/key_match.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace bnadapt::checkpoint {
namespace {

const std::vector<ExpectedBuffer> kBuffers = {{"bn1.running_mean", {4}, true},
                                              {"bn1.running_var", {4}, true},
                                              {"bn1.num_batches_tracked", {}, false},
                                              {"l.0.bn.running_mean", {2}, true},
                                              {"l.0.bn.running_var", {2}, true}};

KeyedDict dict(const std::string& path, const std::string& prefix, bool complete = true) {
  KeyedDict d{path, {prefix + "conv.weight"}, {}};
  for (const auto& b : kBuffers) {
    if (complete || b.name.find("l.0") == std::string::npos) d.keys.push_back(prefix + b.name);
  }
  return d;
}

std::string errorOf(const std::vector<KeyedDict>& dicts, const std::string& choice = "") {
  try {
    matchKeys(dicts, kBuffers, choice, "ck.pt");
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kCheckpoint);
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

TEST(KeyMatch, FindsNestedDictAndAnyPrefix) {
  for (const std::string prefix : {"", "module.", "model.", "backbone.encoder."}) {
    KeyMatch m = matchKeys({KeyedDict{"optimizer", {"x"}, {}}, dict("model", prefix)}, kBuffers, "",
                           "ck.pt");
    EXPECT_EQ(m.dict_path, "model");
    EXPECT_EQ(m.prefix, prefix);
  }
}

TEST(KeyMatch, OptionalBuffersMayBeMissing) {
  KeyedDict d = dict("", "");
  d.keys.erase(std::find(d.keys.begin(), d.keys.end(), "bn1.num_batches_tracked"));
  EXPECT_EQ(matchKeys({d}, kBuffers, "", "ck.pt").id(), ":");
}

TEST(KeyMatch, AmbiguousListsCandidatesAndKeyChooses) {
  std::vector<KeyedDict> dicts = {dict("model", "module."), dict("ema", "module.")};
  const std::string msg = errorOf(dicts);
  EXPECT_NE(msg.find("2 state_dicts"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--checkpoint-key 'model:module.'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--checkpoint-key 'ema:module.'"), std::string::npos) << msg;
  EXPECT_EQ(matchKeys(dicts, kBuffers, "ema", "ck.pt").dict_path, "ema");
  EXPECT_EQ(matchKeys(dicts, kBuffers, "model:module.", "ck.pt").dict_path, "model");
  EXPECT_NE(errorOf(dicts, "nope").find("matches no state_dict"), std::string::npos);
  // Two prefixes in one dict.
  KeyedDict both = dict("", "a.");
  for (const auto& k : dict("", "b.").keys) both.keys.push_back(k);
  EXPECT_NE(errorOf({both}).find("2 state_dicts"), std::string::npos);
  EXPECT_EQ(matchKeys({both}, kBuffers, ":b.", "ck.pt").prefix, "b.");
}

TEST(KeyMatch, ExtraBnLayersUnderThePrefixMakeALooseMatch) {
  // A resnet-like checkpoint: the model's "bn1"/"l.0.bn" names recur under several blocks.
  KeyedDict big{"model", {}, {}};
  for (const std::string block : {"layer1.", "layer2."}) {
    for (const auto& b : kBuffers) big.keys.push_back(block + b.name);
    big.keys.push_back(block + "downsample.1.running_mean");
  }
  const std::string msg = errorOf({big});
  EXPECT_NE(msg.find("no state_dict matches the model exactly; 2 hold"), std::string::npos) << msg;
  EXPECT_EQ(matchKeys({big}, kBuffers, "model:layer2.", "ck.pt").prefix, "layer2.");
  // One loose match alone is taken (the model may have lost a head).
  KeyedDict one{"", {}, {}};
  for (const auto& b : kBuffers) one.keys.push_back(b.name);
  one.keys.push_back("head.bn.running_mean");
  EXPECT_EQ(matchKeys({one}, kBuffers, "", "ck.pt").prefix, "");
}

TEST(KeyMatch, ShapesDecideBetweenPlacesWithTheSameNames) {
  auto shaped = [](const std::string& prefix, int64_t c) {
    KeyedDict d{"", {}, {}};
    for (const auto& b : kBuffers) {
      d.keys.push_back(prefix + b.name);
      d.sizes.push_back(b.sizes.empty() ? b.sizes : std::vector<int64_t>{c});
    }
    return d;
  };
  // Same names under two prefixes; only "b." has the model's channel counts (bn1: 4, l.0.bn: 2
  // differ, so give "a." 8 everywhere).
  KeyedDict d = shaped("a.", 8);
  KeyedDict right{"", {}, {}};
  for (const auto& b : kBuffers) {
    right.keys.push_back("b." + b.name);
    right.sizes.push_back(b.sizes);
  }
  d.keys.insert(d.keys.end(), right.keys.begin(), right.keys.end());
  d.sizes.insert(d.sizes.end(), right.sizes.begin(), right.sizes.end());
  EXPECT_EQ(matchKeys({d}, kBuffers, "", "ck.pt").prefix, "b.");
  // One place by name with a wrong shape is returned: the caller names the bad key.
  EXPECT_EQ(matchKeys({shaped("", 8)}, kBuffers, "", "ck.pt").prefix, "");
  // Several by name, none shaped: another model.
  KeyedDict two = shaped("a.", 8);
  KeyedDict other = shaped("c.", 9);
  two.keys.insert(two.keys.end(), other.keys.begin(), other.keys.end());
  two.sizes.insert(two.sizes.end(), other.sizes.begin(), other.sizes.end());
  EXPECT_NE(errorOf({two}).find("none with the model's shapes"), std::string::npos);
}

TEST(KeyMatch, PrefixesEndAtAModuleBoundary) {
  // A flat state_dict with the model's layers and an "ema_" copy beside them.
  KeyedDict d{"", {}, {}};
  for (const auto& b : kBuffers) {
    d.keys.push_back(b.name);
    d.keys.push_back("ema_" + b.name);
  }
  KeyMatch m = matchKeys({d}, kBuffers, "", "ck.pt");
  EXPECT_EQ(m.prefix, "");
}

TEST(KeyMatch, NothingMatchesSaysWhatIsMissing) {
  const std::string partial = errorOf({dict("model", "module.", false)});
  EXPECT_NE(partial.find("has 2 of 4 but lacks 'module.l.0.bn.running_mean'"), std::string::npos)
      << partial;
  const std::string none = errorOf({KeyedDict{"", {"fc.weight"}, {}}});
  EXPECT_NE(none.find("keys ending in 'bn1.running_mean'"), std::string::npos) << none;
}

}  // namespace
}  // namespace bnadapt::checkpoint
