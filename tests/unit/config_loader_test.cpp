#include "config/config_loader.h"
#include "config/options.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/error.h"
#include "config/settings.h"

namespace bnadapt::config {
namespace {

namespace fs = std::filesystem;

#define EXPECT_CONTAINS(haystack, needle)                          \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) \
      << "expected to find: " << (needle) << "\n                in: " << (haystack)

class ConfigLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "bnadapt_cfg_test_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }

  void TearDown() override {
    std::error_code ec;
    fs::current_path(old_cwd_, ec);
    fs::remove_all(dir_, ec);
  }

  // Writes `text` to dir_/name (creating parent folders) and returns the full path.
  std::string write(const std::string& name, const std::string& text) {
    const fs::path path = dir_ / name;
    fs::create_directories(path.parent_path());
    std::ofstream out(path, std::ios::binary);
    out << text;
    return path.string();
  }

  // The message of the usage error parseSettings(args) must throw.
  static std::string usageError(const std::vector<std::string>& args) {
    try {
      parseSettings(args);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kUsage) << e.what();
      return e.what();
    }
    ADD_FAILURE() << "parseSettings did not throw";
    return "";
  }

  // The usage error for a config file with the given text (plus --model/--data/--samples).
  std::string configError(const std::string& text) {
    const std::string cfg = write("cfg.json", text);
    const std::string msg =
        usageError({"--config", cfg, "--model", "m.pt", "--data", "d", "--samples", "8"});
    EXPECT_EQ(msg.rfind(cfg, 0), 0u) << "message should begin with the config path: " << msg;
    return msg;
  }

  Settings parseConfig(const std::string& text, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--config", write("cfg.json", text)};
    args.insert(args.end(), extra.begin(), extra.end());
    return parseSettings(args);
  }

  fs::path dir_;
  const fs::path old_cwd_ = fs::current_path();  // restored by TearDown
};

const std::vector<std::string> kRequired = {"--model", "m.pt", "--data", "d", "--samples", "8"};

std::vector<std::string> withRequired(std::vector<std::string> args) {
  args.insert(args.end(), kRequired.begin(), kRequired.end());
  return args;
}

// ---------------------------------------------------------------------------------------------
// Command line only.

TEST_F(ConfigLoaderTest, FlagsOnlySetEveryField) {
  const Settings s =
      parseSettings({"--model",        "net.pt",   "--data",       "calib/",
                     "--samples",      "2048",     "--batch-size", "64",
                     "--weighting",    "batches",  "--output",     "out.pt",
                     "--stats-output", "stats.pt", "--report",     "r.json",
                     "--threads",      "7",        "--seed",       "18446744073709551615"});
  EXPECT_EQ(s.model_path, "net.pt");
  EXPECT_EQ(s.data_path, "calib/");
  EXPECT_EQ(s.samples, 2048);
  EXPECT_EQ(s.batch_size, 64);
  EXPECT_EQ(s.weighting, Weighting::kBatches);
  EXPECT_EQ(s.output_path, "out.pt");
  EXPECT_EQ(s.stats_output_path, "stats.pt");
  EXPECT_EQ(s.report_path, "r.json");
  EXPECT_EQ(s.threads, 7);
  EXPECT_EQ(s.seed, 18446744073709551615ULL);
  EXPECT_TRUE(s.sample_shape.empty());
  EXPECT_TRUE(s.compression_algorithms.empty());
  EXPECT_TRUE(s.ignored_keys.empty());
  EXPECT_EQ(s.config_path, "");
}

TEST_F(ConfigLoaderTest, FlagsEqualsFormAndDefaults) {
  const Settings s = parseSettings({"--model=a.pt", "--data=synthetic", "--samples=100"});
  EXPECT_EQ(s.model_path, "a.pt");
  EXPECT_EQ(s.data_path, "synthetic");
  EXPECT_EQ(s.samples, 100);
  EXPECT_EQ(s.batch_size, 32);
  EXPECT_EQ(s.weighting, Weighting::kSamples);
  EXPECT_EQ(s.threads, 0);
  EXPECT_EQ(s.seed, 0u);
  EXPECT_EQ(s.output_path, "");
  EXPECT_EQ(s.stats_output_path, "");
  EXPECT_EQ(s.report_path, "");
}

TEST_F(ConfigLoaderTest, EqualsFormKeepsLaterEqualsInValue) {
  const Settings s = parseSettings({"--model=dir/a=b.pt", "--data", "-", "--samples", "1"});
  EXPECT_EQ(s.model_path, "dir/a=b.pt");
  EXPECT_EQ(s.data_path, "-");
}

TEST_F(ConfigLoaderTest, HelpAnywhereWins) {
  EXPECT_THROW(parseSettings({"--help"}), HelpRequested);
  EXPECT_THROW(parseSettings({"-h"}), HelpRequested);
  EXPECT_THROW(parseSettings({"--sample", "5", "--help"}), HelpRequested);
}

TEST_F(ConfigLoaderTest, UsageListsEveryOption) {
  const std::string text = usage();
  for (const char* flag : {"--config", "--model", "--data", "--samples", "--batch-size",
                           "--weighting", "--output", "--stats-output", "--report", "--threads",
                           "--seed", "--help", "num_bn_adaptation_samples", "sample_size"}) {
    EXPECT_CONTAINS(text, flag);
  }
  EXPECT_EQ(text.back(), '\n');
}

TEST_F(ConfigLoaderTest, UnknownFlagSuggestsNearest) {
  EXPECT_CONTAINS(usageError(withRequired({"--sample", "5"})),
                  "unknown option '--sample'; did you mean '--samples'?");
  EXPECT_CONTAINS(usageError(withRequired({"--batch_size=5"})),
                  "unknown option '--batch_size'; did you mean '--batch-size'?");
  EXPECT_CONTAINS(usageError(withRequired({"--stats-ouptut", "x"})),
                  "did you mean '--stats-output'?");
}

TEST_F(ConfigLoaderTest, UnknownFlagFarFromAllListsOptions) {
  const std::string msg = usageError(withRequired({"--frobnicate", "5"}));
  EXPECT_CONTAINS(msg, "unknown option '--frobnicate'; valid options: --config, --model");
  EXPECT_EQ(msg.find("did you mean"), std::string::npos) << msg;
}

TEST_F(ConfigLoaderTest, MissingFlagValue) {
  EXPECT_CONTAINS(usageError({"--model", "m.pt", "--data", "d", "--samples"}),
                  "option '--samples' needs a value");
  EXPECT_CONTAINS(usageError({"--model", "--data", "d", "--samples", "3"}),
                  "option '--model' needs a value, found option '--data'");
  EXPECT_CONTAINS(usageError(withRequired({"--output="})),
                  "option '--output' needs a non-empty value");
}

TEST_F(ConfigLoaderTest, FlagGivenTwice) {
  EXPECT_CONTAINS(usageError(withRequired({"--samples", "9"})),
                  "option '--samples' given more than once");
}

TEST_F(ConfigLoaderTest, PositionalArgumentRejected) {
  EXPECT_CONTAINS(usageError(withRequired({"model.pt"})), "unexpected argument 'model.pt'");
}

TEST_F(ConfigLoaderTest, BadIntegerFlags) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"0", "found '0'"},
      {"-5", "found '-5'"},
      {"1.5", "found '1.5'"},
      {"2k", "found '2k'"},
      {"1e3", "found '1e3'"},
      {" 5", "found ' 5'"},
      {"+5", "found '+5'"},
      {"1000000000001", "found '1000000000001'"},
      {"99999999999999999999999", "found '99999999999999999999999'"}};
  for (const auto& [value, found] : cases) {
    const std::string msg = usageError({"--model", "m", "--data", "d", "--samples", value});
    EXPECT_CONTAINS(msg, "option '--samples': expected a positive integer at most 1000000000000");
    EXPECT_CONTAINS(msg, found);
  }
  EXPECT_EQ(parseSettings({"--model", "m", "--data", "d", "--samples", "1000000000000"}).samples,
            1000000000000);
  EXPECT_CONTAINS(usageError(withRequired({"--batch-size", "1000001"})),
                  "option '--batch-size': expected a positive integer at most 1000000");
  EXPECT_EQ(parseSettings(withRequired({"--batch-size", "1000000"})).batch_size, 1000000);
  EXPECT_CONTAINS(usageError(withRequired({"--threads", "-1"})),
                  "option '--threads': expected a non-negative integer");
  EXPECT_CONTAINS(usageError(withRequired({"--seed", "18446744073709551616"})),
                  "option '--seed': expected a non-negative integer below 2^64");
  EXPECT_EQ(parseSettings(withRequired({"--seed", "0"})).seed, 0u);
}

TEST_F(ConfigLoaderTest, BadWeightingFlag) {
  EXPECT_CONTAINS(usageError(withRequired({"--weighting", "sample"})),
                  "option '--weighting': expected 'samples' or 'batches', found 'sample'");
}

TEST_F(ConfigLoaderTest, RequiredValuesWithoutConfig) {
  EXPECT_CONTAINS(usageError({"--data", "d", "--samples", "3"}),
                  "no model given: pass --model PATH or set bnadapt_dist.model in a --config file");
  EXPECT_CONTAINS(usageError({"--model", "m", "--samples", "3"}),
                  "no data given: pass --data PATH");
  const std::string msg = usageError({"--model", "m", "--data", "d"});
  EXPECT_CONTAINS(msg,
                  "no sample count given: pass --samples N or set bnadapt_dist.samples or "
                  "compression.initializer.batchnorm_adaptation.num_bn_adaptation_samples");
}

// ---------------------------------------------------------------------------------------------
// Config file.

const char* const kFullConfig = R"({
  // our section
  "bnadapt_dist": {
    "model": "/abs/model.pt", "data": "/abs/data", "samples": 4096, "batch_size": 48,
    "weighting": "batches", "output": "/abs/out.pt", "stats_output": "/abs/stats.pt",
    "report": "/abs/report.json", "threads": 3, "seed": 12345
  },
  "input_info": {"sample_size": [1, 3, 224, 224]},
  "batch_size": 256,
  "compression": {
    "algorithm": "quantization",
    "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 2048}}
  }
})";

TEST_F(ConfigLoaderTest, ConfigOnly) {
  const std::string cfg = write("cfg.json", kFullConfig);
  const Settings s = parseSettings({"--config", cfg});
  EXPECT_EQ(s.config_path, cfg);
  EXPECT_EQ(s.model_path, "/abs/model.pt");
  EXPECT_EQ(s.data_path, "/abs/data");
  EXPECT_EQ(s.samples, 4096);
  EXPECT_EQ(s.batch_size, 48);
  EXPECT_EQ(s.weighting, Weighting::kBatches);
  EXPECT_EQ(s.output_path, "/abs/out.pt");
  EXPECT_EQ(s.stats_output_path, "/abs/stats.pt");
  EXPECT_EQ(s.report_path, "/abs/report.json");
  EXPECT_EQ(s.threads, 3);
  EXPECT_EQ(s.seed, 12345u);
  EXPECT_EQ(s.sample_shape, (std::vector<int64_t>{3, 224, 224}));
  EXPECT_EQ(s.compression_algorithms, (std::vector<std::string>{"quantization"}));
  EXPECT_TRUE(s.ignored_keys.empty());
}

TEST_F(ConfigLoaderTest, FlagsOverrideConfig) {
  const std::string cfg = write("cfg.json", kFullConfig);
  const Settings s =
      parseSettings({"--model",        "m2.pt", "--data",         "synthetic", "--samples", "10",
                     "--batch-size",   "5",     "--weighting",    "samples",   "--output",  "o2",
                     "--stats-output", "s2",    "--report",       "r2",        "--threads", "0",
                     "--seed",         "9",     "--config=" + cfg});
  EXPECT_EQ(s.model_path, "m2.pt");
  EXPECT_EQ(s.data_path, "synthetic");
  EXPECT_EQ(s.samples, 10);
  EXPECT_EQ(s.batch_size, 5);
  EXPECT_EQ(s.weighting, Weighting::kSamples);
  EXPECT_EQ(s.output_path, "o2");
  EXPECT_EQ(s.stats_output_path, "s2");
  EXPECT_EQ(s.report_path, "r2");
  EXPECT_EQ(s.threads, 0);
  EXPECT_EQ(s.seed, 9u);
  // Not overridable by flags: still from the file.
  EXPECT_EQ(s.sample_shape, (std::vector<int64_t>{3, 224, 224}));
  EXPECT_EQ(s.config_path, cfg);
}

TEST_F(ConfigLoaderTest, CommentsAllowed) {
  const Settings s = parseConfig(R"(
    /* block comment
       over lines */
    {
      // line comment
      "bnadapt_dist": {"model": "/m", /* inline */ "data": "/d", "samples": 7} // trailing
    }
    // after
  )");
  EXPECT_EQ(s.model_path, "/m");
  EXPECT_EQ(s.data_path, "/d");
  EXPECT_EQ(s.samples, 7);
}

TEST_F(ConfigLoaderTest, RelativePathsResolveAgainstConfigDir) {
  const std::string cfg = write("sub/dir/cfg.json", R"({"bnadapt_dist": {
      "model": "models/m.pt", "data": "synthetic", "output": "../out.pt",
      "stats_output": "/abs/stats.pt", "report": "r.json", "samples": 1}})");
  const fs::path base = fs::path(cfg).parent_path();
  const Settings s = parseSettings({"--config", cfg});
  EXPECT_EQ(s.model_path, (base / "models/m.pt").string());
  EXPECT_EQ(s.data_path, "synthetic");
  EXPECT_EQ(s.output_path, (base / "../out.pt").lexically_normal().string());  // normalised
  EXPECT_EQ(s.stats_output_path, "/abs/stats.pt");
  EXPECT_EQ(s.report_path, (base / "r.json").string());

  // Relative data path from the file is resolved too; flags are kept as given.
  const std::string cfg2 =
      write("sub/cfg2.json", R"({"bnadapt_dist": {"model": "m.pt", "data": "calib"}})");
  const Settings s2 = parseSettings({"--config", cfg2, "--report", "rel/r.json", "--samples", "3"});
  EXPECT_EQ(s2.model_path, (dir_ / "sub/m.pt").string());
  EXPECT_EQ(s2.data_path, (dir_ / "sub/calib").string());
  EXPECT_EQ(s2.report_path, "rel/r.json");
}

TEST_F(ConfigLoaderTest, RelativeConfigPathInWorkingDir) {
  write("cfg.json", R"({"bnadapt_dist": {"model": "m.pt", "data": "d", "samples": 1}})");
  write("sub/cfg.json", R"({"bnadapt_dist": {"model": "m.pt", "data": "d", "samples": 1}})");
  fs::current_path(dir_);  // TearDown restores it
  const Settings here = parseSettings({"--config", "cfg.json"});
  const Settings sub = parseSettings({"--config", "sub/cfg.json"});
  EXPECT_EQ(here.config_path, "cfg.json");
  EXPECT_EQ(here.model_path, "m.pt");
  EXPECT_EQ(sub.config_path, "sub/cfg.json");
  EXPECT_EQ(sub.model_path, "sub/m.pt");
  EXPECT_EQ(sub.data_path, "sub/d");
}

TEST_F(ConfigLoaderTest, NncfListCompressionAndIgnoredKeys) {
  const Settings s = parseConfig(R"({
    "model": "resnet50",
    "pretrained": true,
    "input_info": [{"sample_size": [2, 3, 32, 48], "type": "float"}],
    "epochs": 5,
    "optimizer": {"type": "Adam", "base_lr": 1e-4},
    "compression": [
      {"algorithm": "quantization",
       "params": {"batch_multiplier": 1},
       "initializer": {"range": {"num_init_samples": 256},
                       "batchnorm_adaptation": {"num_bn_adaptation_samples": 300}}},
      {"algorithm": "filter_pruning", "pruning_init": 0.1,
       "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 300,
                                                "num_bn_forget_samples": 100}}}
    ],
    "bnadapt_dist": {"model": "/m.pt", "data": "/d"}
  })");
  EXPECT_EQ(s.samples, 300);
  EXPECT_EQ(s.batch_size, 32);
  EXPECT_EQ(s.model_path, "/m.pt");
  EXPECT_EQ(s.sample_shape, (std::vector<int64_t>{3, 32, 48}));
  EXPECT_EQ(s.compression_algorithms, (std::vector<std::string>{"quantization", "filter_pruning"}));
  // Sorted by JSON path (object keys iterate in sorted order).
  EXPECT_EQ(s.ignored_keys,
            (std::vector<std::string>{
                "compression[0].initializer.range", "compression[0].params",
                "compression[1].initializer.batchnorm_adaptation.num_bn_forget_samples",
                "compression[1].pruning_init", "epochs", "input_info[0].type", "model", "optimizer",
                "pretrained"}));
}

TEST_F(ConfigLoaderTest, ObjectCompressionIgnoredKeyPaths) {
  const Settings s = parseConfig(R"({
    "compression": {"algorithm": "quantization", "params": {},
                    "initializer": {"precision": {"type": "hawq"}}}
  })",
                                 kRequired);
  EXPECT_EQ(s.ignored_keys,
            (std::vector<std::string>{"compression.initializer.precision", "compression.params"}));
  EXPECT_EQ(s.compression_algorithms, (std::vector<std::string>{"quantization"}));
}

TEST_F(ConfigLoaderTest, SamplesPrecedence) {
  const std::string nncf_only = R"({
    "bnadapt_dist": {"model": "/m", "data": "/d"},
    "compression": {"algorithm": "quantization",
                    "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 512}}}
  })";
  EXPECT_EQ(parseConfig(nncf_only).samples, 512);
  EXPECT_EQ(parseConfig(nncf_only, {"--samples", "64"}).samples, 64);

  const std::string both = R"({
    "bnadapt_dist": {"model": "/m", "data": "/d", "samples": 1000},
    "compression": {"algorithm": "quantization",
                    "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 512}}}
  })";
  EXPECT_EQ(parseConfig(both).samples, 1000);
  EXPECT_EQ(parseConfig(both, {"--samples", "64"}).samples, 64);
}

TEST_F(ConfigLoaderTest, SamplesConflictBetweenCompressionEntries) {
  const std::string text = R"({
    "bnadapt_dist": {"model": "/m", "data": "/d"},
    "compression": [
      {"algorithm": "quantization",
       "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 512}}},
      {"algorithm": "magnitude_sparsity"},
      {"algorithm": "filter_pruning",
       "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 1024}}}
    ]
  })";
  const std::string cfg = write("cfg.json", text);
  const std::string msg = usageError({"--config", cfg});
  EXPECT_EQ(msg.rfind(cfg, 0), 0u) << msg;
  EXPECT_CONTAINS(
      msg, "compression[0].initializer.batchnorm_adaptation.num_bn_adaptation_samples = 512");
  EXPECT_CONTAINS(
      msg, "compression[2].initializer.batchnorm_adaptation.num_bn_adaptation_samples = 1024");
  EXPECT_CONTAINS(msg, "disagree");
  // Resolved by a higher-priority source.
  EXPECT_EQ(parseSettings({"--config", cfg, "--samples", "77"}).samples, 77);
}

TEST_F(ConfigLoaderTest, BatchSizePrecedence) {
  const std::string top = R"({"batch_size": 256, "bnadapt_dist": {"model": "/m", "data": "/d",
                              "samples": 1}})";
  EXPECT_EQ(parseConfig(top).batch_size, 256);
  EXPECT_EQ(parseConfig(top, {"--batch-size", "8"}).batch_size, 8);
  const std::string both = R"({"batch_size": 256, "bnadapt_dist": {"model": "/m", "data": "/d",
                               "samples": 1, "batch_size": 16}})";
  EXPECT_EQ(parseConfig(both).batch_size, 16);
  EXPECT_EQ(parseConfig(both, {"--batch-size", "8"}).batch_size, 8);
  EXPECT_EQ(
      parseConfig(R"({"bnadapt_dist": {"model": "/m", "data": "/d", "samples": 1}})").batch_size,
      32);
}

TEST_F(ConfigLoaderTest, RequiredValuesNameTheConfig) {
  const std::string cfg = write("cfg.json", R"({"bnadapt_dist": {"data": "/d"}})");
  EXPECT_CONTAINS(usageError({"--config", cfg, "--samples", "2"}),
                  "no model given: pass --model PATH or set bnadapt_dist.model in " + cfg);
  const std::string msg = usageError({"--config", cfg, "--model", "m"});
  EXPECT_CONTAINS(msg, "no sample count given");
  EXPECT_CONTAINS(msg, "num_bn_adaptation_samples in " + cfg);
}

// ---------------------------------------------------------------------------------------------
// Config file errors.

TEST_F(ConfigLoaderTest, UnknownSectionKeySuggestsNearest) {
  const std::string msg = configError(R"({"bnadapt_dist": {"batchsize": 64}})");
  EXPECT_CONTAINS(msg, "unknown key 'bnadapt_dist.batchsize'; did you mean 'batch_size'?");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"stats-output": "x"}})"),
                  "unknown key 'bnadapt_dist.stats-output'; did you mean 'stats_output'?");
}

TEST_F(ConfigLoaderTest, UnknownSectionKeyFarFromAllListsValidKeys) {
  const std::string msg = configError(R"({"bnadapt_dist": {"learning_rate": 0.1}})");
  EXPECT_CONTAINS(msg, "unknown key 'bnadapt_dist.learning_rate'; valid keys: 'model', 'data'");
  EXPECT_CONTAINS(msg, "'seed'");
  EXPECT_EQ(msg.find("did you mean"), std::string::npos) << msg;
}

TEST_F(ConfigLoaderTest, UnknownBnAdaptationKey) {
  const std::string msg = configError(R"({"compression": [{"algorithm": "quantization",
      "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_steps": 30}}}]})");
  EXPECT_CONTAINS(msg,
                  "unknown key "
                  "'compression[0].initializer.batchnorm_adaptation.num_bn_adaptation_steps'; "
                  "did you mean 'num_bn_adaptation_samples'?");
}

TEST_F(ConfigLoaderTest, NearMissOfOurSectionIsAnError) {
  EXPECT_CONTAINS(configError(R"({"bnadapt-dist": {"model": "m"}})"),
                  "unknown key 'bnadapt-dist'; did you mean 'bnadapt_dist'?");
  EXPECT_CONTAINS(configError(R"({"input_infos": {}})"),
                  "unknown key 'input_infos'; did you mean 'input_info'?");
}

TEST_F(ConfigLoaderTest, WrongTypes) {
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"batch_size": "64"}})"),
                  "bnadapt_dist.batch_size: expected a positive integer at most 1000000, "
                  "found string \"64\"");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"batch_size": 64.5}})"),
                  "bnadapt_dist.batch_size: expected a positive integer at most 1000000, found "
                  "number 64.5");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"samples": 1e308}})"),
                  "bnadapt_dist.samples: expected a positive integer at most 1000000000000, "
                  "found number 1e+308");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"samples": 0}})"),
                  "bnadapt_dist.samples: expected a positive integer at most 1000000000000, "
                  "found number 0");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"samples": -3}})"), "found number -3");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"samples": 1000000000001}})"),
                  "found number 1000000000001");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"samples": 2.0}})"), "found number 2.0");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"threads": -1}})"),
                  "bnadapt_dist.threads: expected a non-negative integer");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"seed": 18446744073709551616}})"),
                  "bnadapt_dist.seed: expected a non-negative integer below 2^64, found number");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"model": 3}})"),
                  "bnadapt_dist.model: expected a path string, found number 3");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"output": ""}})"),
                  "bnadapt_dist.output: expected a path string, found string \"\"");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"report": null}})"),
                  "bnadapt_dist.report: expected a path string, found null");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": [1]})"),
                  "bnadapt_dist: expected an object, found array");
  EXPECT_CONTAINS(configError(R"({"batch_size": true})"),
                  "batch_size: expected a positive integer at most 1000000, found boolean true");
  EXPECT_CONTAINS(configError(R"({"compression": "quantization"})"),
                  "compression: expected an object or a list of objects, found string");
  EXPECT_CONTAINS(configError(R"({"compression": [{"algorithm": "q"}, 5]})"),
                  "compression[1]: expected an object, found number 5");
  EXPECT_CONTAINS(configError(R"({"compression": {"algorithm": ["q"]}})"),
                  "compression.algorithm: expected an algorithm name string, found array");
  EXPECT_CONTAINS(configError(R"({"compression": {"initializer": {}}})"),
                  "compression: missing \"algorithm\"");
  EXPECT_CONTAINS(configError(R"({"compression": {"algorithm": "q", "initializer": 1}})"),
                  "compression.initializer: expected an object, found number 1");
  EXPECT_CONTAINS(
      configError(R"({"compression": {"algorithm": "q", "initializer":
                      {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}})"),
      "compression.initializer.batchnorm_adaptation.num_bn_adaptation_samples: expected a "
      "positive integer at most 1000000000000, found number 0");
}

TEST_F(ConfigLoaderTest, LongFoundValuesAreShortened) {
  const std::string msg =
      configError("{\"bnadapt_dist\": {\"samples\": \"" + std::string(500, 'x') + "\"}}");
  EXPECT_CONTAINS(msg, "...");
  EXPECT_LT(msg.size(), 300u) << msg;
}

TEST_F(ConfigLoaderTest, BadWeightingInConfig) {
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"weighting": "uniform"}})"),
                  "bnadapt_dist.weighting: expected \"samples\" or \"batches\", found string "
                  "\"uniform\"");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"weighting": 1}})"),
                  "bnadapt_dist.weighting: expected \"samples\" or \"batches\", found number 1");
}

TEST_F(ConfigLoaderTest, InputInfoErrors) {
  EXPECT_CONTAINS(configError(R"({"input_info": [{"sample_size": [1, 3]},
                                                 {"sample_size": [1, 4]}]})"),
                  "input_info: 2 entries: multiple inputs not supported");
  EXPECT_CONTAINS(configError(R"({"input_info": []})"), "input_info: expected one input");
  EXPECT_CONTAINS(configError(R"({"input_info": {"sample_size": [1]}})"),
                  "input_info.sample_size: expected an array of at least 2 positive integers, "
                  "found array");
  EXPECT_CONTAINS(configError(R"({"input_info": {"sample_size": "1,3"}})"),
                  "input_info.sample_size: expected an array of at least 2 positive integers, "
                  "found string");
  EXPECT_CONTAINS(configError(R"({"input_info": {"sample_size": [1, 3, 0, 224]}})"),
                  "input_info.sample_size[2]: expected a positive integer at most 2147483647, "
                  "found number 0");
  EXPECT_CONTAINS(configError(R"({"input_info": [{"sample_size": [1, 3.5]}]})"),
                  "input_info[0].sample_size[1]: expected a positive integer");
  EXPECT_CONTAINS(configError(R"({"input_info": {"type": "float"}})"),
                  "input_info: missing \"sample_size\"");
  EXPECT_CONTAINS(configError(R"({"input_info": 3})"),
                  "input_info: expected an object or a list of one object, found number 3");
}

TEST_F(ConfigLoaderTest, DuplicateKeys) {
  EXPECT_CONTAINS(configError(R"({"epochs": 1, "epochs": 2})"), "duplicate key 'epochs'");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"samples": 1, "model": "m", "samples": 2}})"),
                  "duplicate key 'bnadapt_dist.samples'");
  EXPECT_CONTAINS(configError(R"({"compression": [{"algorithm": "a"},
      {"algorithm": "b", "initializer": {"range": {"x": [1, {"k": 1, "k": 2}]}}}]})"),
                  "duplicate key 'compression[1].initializer.range.x[1].k'");
  // The same key in sibling objects is fine.
  const Settings s =
      parseConfig(R"({"a": {"k": 1}, "b": {"k": 1}, "c": [{"k": 1}, {"k": 2}]})", kRequired);
  EXPECT_EQ(s.ignored_keys, (std::vector<std::string>{"a", "b", "c"}));
}

TEST_F(ConfigLoaderTest, MalformedJsonReportsPosition) {
  const std::string msg = configError("{\n  \"bnadapt_dist\": {\n    \"samples\": 64,\n  }\n}");
  EXPECT_CONTAINS(msg, "invalid JSON at byte 44");
  EXPECT_CONTAINS(msg, "line 4");
  EXPECT_CONTAINS(configError("{\"a\": 1} trailing"), "invalid JSON at byte");
  EXPECT_CONTAINS(configError("{\"a\": 1e400}"), "invalid JSON");
}

TEST_F(ConfigLoaderTest, EmptyFile) {
  EXPECT_CONTAINS(configError(""), "config file is empty");
  EXPECT_CONTAINS(configError(" \n\t\n"), "config file is empty");
  EXPECT_CONTAINS(configError("// only a comment\n"), "invalid JSON");
}

TEST_F(ConfigLoaderTest, RootMustBeObject) {
  EXPECT_CONTAINS(configError("[1, 2]"), "the top level must be a JSON object, found array");
  EXPECT_CONTAINS(configError("\"x\""), "the top level must be a JSON object, found string");
  EXPECT_CONTAINS(configError("null"), "the top level must be a JSON object, found null");
}

TEST_F(ConfigLoaderTest, NonUtf8) {
  const std::string msg = configError("{\"bnadapt_dist\": {\"model\": \"a\xff\xfe\"}}");
  EXPECT_CONTAINS(msg, "invalid JSON at byte");
  EXPECT_CONTAINS(msg, "UTF-8");
}

TEST_F(ConfigLoaderTest, DeepNestingRejectedWithoutCrash) {
  const std::size_t n = 200000;
  const std::string deep = "{\"a\": " + std::string(n, '[') + std::string(n, ']') + "}";
  EXPECT_CONTAINS(configError(deep), "JSON nested deeper than 64 levels");
  const std::string objects = "{\"a\": " + [] {
    std::string s;
    for (int i = 0; i < 100000; ++i) s += "{\"b\": ";
    s += "1";
    for (int i = 0; i < 100000; ++i) s += "}";
    return s;
  }() + "}";
  EXPECT_CONTAINS(configError(objects), "JSON nested deeper than 64 levels");
}

TEST_F(ConfigLoaderTest, NestingLimitBoundary) {
  // Root object + 63 arrays = 64 levels: accepted.
  const std::string ok = "{\"a\": " + std::string(63, '[') + std::string(63, ']') + "}";
  EXPECT_EQ(parseConfig(ok, kRequired).ignored_keys, (std::vector<std::string>{"a"}));
  const std::string deep = "{\"a\": " + std::string(64, '[') + std::string(64, ']') + "}";
  EXPECT_CONTAINS(configError(deep), "JSON nested deeper than 64 levels");
}

TEST_F(ConfigLoaderTest, LargeArraysAndObjectsParse) {
  // 50k objects in one array and 50k keys in one object: parsed in linear-ish time (a
  // quadratic parser would take minutes here).
  std::string text = "{\"big_list\": [";
  for (int i = 0; i < 50000; ++i) text += (i ? ",{\"a\":[]}" : "{\"a\":[]}");
  text += "], \"big_object\": {";
  for (int i = 0; i < 50000; ++i) text += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":0";
  text += "}}";
  EXPECT_EQ(parseConfig(text, kRequired).ignored_keys,
            (std::vector<std::string>{"big_list", "big_object"}));
}

TEST_F(ConfigLoaderTest, OversizedConfigRejected) {
  const std::string msg = configError("{\"a\": \"" + std::string(17u << 20, 'x') + "\"}");
  EXPECT_CONTAINS(msg, "bytes; at most 16777216 are allowed");
}

TEST_F(ConfigLoaderTest, MissingOrUnreadableConfig) {
  const std::string missing = (dir_ / "nope.json").string();
  const std::string msg = usageError(withRequired({"--config", missing}));
  EXPECT_EQ(msg.rfind(missing, 0), 0u) << msg;
  EXPECT_CONTAINS(msg, "cannot read config file");
  const std::string dir_msg = usageError(withRequired({"--config", dir_.string()}));
  EXPECT_CONTAINS(dir_msg, dir_.string() + ": cannot read config file: it is a directory");
}

// Hostile config text: every message stays one printable line, every size stays bounded.

TEST_F(ConfigLoaderTest, KeysInMessagesAreEscapedAndShortened) {
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"batch\nsize": 1}})"),
                  "unknown key 'bnadapt_dist.batch\\nsize'");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"model\u0000": "m"}})"),
                  "unknown key 'bnadapt_dist.model\\u0000'; did you mean 'model'?");
  EXPECT_CONTAINS(configError(R"({"x": 1, "x\u2028": 1, "x\u2028": 2})"),
                  "duplicate key 'x\\u2028'");
  const std::string msg =
      configError("{\"bnadapt_dist\": {\"" + std::string(1 << 20, 'k') + "\": 1}}");
  EXPECT_CONTAINS(msg, "unknown key 'bnadapt_dist." + std::string(60, 'k') + "...'");
  EXPECT_LT(msg.size(), 1000u);
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

TEST_F(ConfigLoaderTest, ParseErrorsAreOnePrintableLine) {
  // nlohmann quotes the token it was reading: raw bytes, or the whole of a long string.
  const std::string latin1 = configError("{\"bnadapt_dist\": {\"model\": \"caf\xe9\"}}");
  EXPECT_CONTAINS(latin1, "ill-formed UTF-8 byte; last read: '\"caf\\xe9\"'");
  const std::string long_token =
      configError("{\"a\": \"" + std::string(100000, 'x') + "\x01\"}");
  EXPECT_CONTAINS(long_token, "last read: '..." + std::string(52, 'x') + "<U+0001>'");
  EXPECT_LT(long_token.size(), 1000u);
}

TEST_F(ConfigLoaderTest, NulBytesAreRejected) {
  // nlohmann's lexer stops at a NUL: without the check the rest of the file was ignored.
  const std::string msg = configError(std::string("{\"a\": 1}\n\0{\"b\": 2}", 18));
  EXPECT_CONTAINS(msg, "invalid JSON at byte 10: NUL byte at line 2, column 1");
}

TEST_F(ConfigLoaderTest, EndlessConfigFileIsReadUpToTheLimit) {
  const std::string msg = usageError(withRequired({"--config", "/dev/zero"}));
  EXPECT_CONTAINS(msg, "/dev/zero: config file is more than 16777216 bytes");
}

TEST_F(ConfigLoaderTest, SampleSizeProductIsBounded) {
  EXPECT_CONTAINS(configError(R"({"input_info": {"sample_size": [1, 3, 65536, 65536]}})"),
                  "input_info.sample_size: [1,3,65536,65536] makes samples of more than "
                  "2147483647 values");
  EXPECT_CONTAINS(
      configError(R"({"input_info": {"sample_size": [1, 2147483647, 2147483647, 2]}})"),
      "makes samples of more than 2147483647 values");
  EXPECT_EQ(parseConfig(R"({"input_info": {"sample_size": [8, 2147483647]}})", kRequired)
                .sample_shape,
            (std::vector<int64_t>{2147483647}));
}

TEST_F(ConfigLoaderTest, OptionsThatNeedEachOtherNameTheConfigKey) {
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"checkpoint": "c.pt"}})"),
                  ": bnadapt_dist.checkpoint needs --checkpoint-output OUT or "
                  "bnadapt_dist.checkpoint_output");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"eval": true}})"),
                  ": bnadapt_dist.eval needs --eval-data PATH or bnadapt_dist.eval_data");
  EXPECT_CONTAINS(configError(R"({"bnadapt_dist": {"max_skip_fraction": 0.5}})"),
                  ": bnadapt_dist.max_skip_fraction applies to --skip-corrupt or "
                  "bnadapt_dist.skip_corrupt, which is not given");
  // From the command line: the flags, as before.
  EXPECT_CONTAINS(usageError(withRequired({"--in-place"})),
                  "--in-place applies to --checkpoint, which is not given");
}

TEST_F(ConfigLoaderTest, LongUnknownKeysCostNoQuadraticTime) {
  // editDistance against each known key: O(length) memory, skipped when the lengths differ
  // by more than any suggestion allows (was a (n+1) x (m+1) table: 1.7 GB for a 16 MB key).
  const std::string key(8 << 20, 'k');
  const std::string msg = configError("{\"" + key + "\": 1, \"bnadapt_dist\": {\"seed\": -1}}");
  EXPECT_CONTAINS(msg, "bnadapt_dist.seed: expected a non-negative integer");
  EXPECT_EQ(nearestKey(key, {"batch_size"}), "");
}

TEST_F(ConfigLoaderTest, ParseSettingsFromTextNeedsNoFile) {
  const Settings s = parseSettingsFromText(
      R"({"bnadapt_dist": {"model": "m.pt", "data": "d", "samples": 8}})", {});
  EXPECT_EQ(s.model_path, "m.pt");
  EXPECT_EQ(s.samples, 8);
  EXPECT_EQ(s.config_path, "<config>");
  try {
    parseSettingsFromText(R"({"bnadapt_dist": {"samples": 0}})",
                          {"--config", "/nowhere/cfg.json", "--model", "m", "--data", "d"});
    ADD_FAILURE() << "accepted samples 0";
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "/nowhere/cfg.json: bnadapt_dist.samples: expected");
  }
  // Relative paths resolve against the named file's folder, which is never opened.
  EXPECT_EQ(parseSettingsFromText(R"({"bnadapt_dist": {"model": "m.pt"}})",
                                  {"--config", "/nowhere/cfg.json", "--data", "d", "--samples",
                                   "1"})
                .model_path,
            "/nowhere/m.pt");
}

// ---------------------------------------------------------------------------------------------
// Helpers.

TEST(NearestKeyTest, SuggestsWithinDistance) {
  const std::vector<std::string> keys = {"model", "data", "samples", "batch_size", "seed"};
  EXPECT_EQ(nearestKey("batchsize", keys), "batch_size");
  EXPECT_EQ(nearestKey("smaples", keys), "samples");  // transposition counts 1
  EXPECT_EQ(nearestKey("sample", keys), "samples");
  EXPECT_EQ(nearestKey("modle", keys), "model");
  EXPECT_EQ(nearestKey("seed", keys), "seed");
  EXPECT_EQ(nearestKey("learning_rate", keys), "");
  EXPECT_EQ(nearestKey("xyz", keys), "");
  EXPECT_EQ(nearestKey("anything", {}), "");
  // Long keys allow len/3 edits: 23 chars -> 7.
  EXPECT_EQ(nearestKey("num_bn_adaptation_steps", {"num_bn_adaptation_samples"}),
            "num_bn_adaptation_samples");
  // Ties go to the earlier candidate.
  EXPECT_EQ(nearestKey("ab", {"aa", "bb"}), "aa");
}

TEST(NearestKeyTest, EditDistance) {
  EXPECT_EQ(editDistance("", ""), 0u);
  EXPECT_EQ(editDistance("abc", ""), 3u);
  EXPECT_EQ(editDistance("", "abc"), 3u);
  EXPECT_EQ(editDistance("kitten", "sitting"), 3u);
  EXPECT_EQ(editDistance("ab", "ba"), 1u);
  EXPECT_EQ(editDistance("batch_size", "batchsize"), 1u);
  EXPECT_EQ(editDistance("samples", "samples"), 0u);
}

TEST(SettingsTest, WeightingName) {
  EXPECT_STREQ(weightingName(Weighting::kSamples), "samples");
  EXPECT_STREQ(weightingName(Weighting::kBatches), "batches");
}

}  // namespace
}  // namespace bnadapt::config
