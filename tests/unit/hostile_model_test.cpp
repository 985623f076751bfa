// 200 truncated or bit-flipped TorchScript models: loading each either works (a flip in bytes
// that do not matter) or fails with bnadapt::Error(kModel) naming the file; never a crash or
// another exception. Needs the test fixtures: BNADAPT_FIXTURES=<build>/fixtures (ctest sets
// it); skips, saying so, without.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/error.h"
#include "model/adaptable_model.h"

namespace bnadapt::model {
namespace {

namespace fs = std::filesystem;

std::vector<char> readAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(HostileModels, TruncatedAndBitFlippedModelsFailCleanly) {
  const char* dir = std::getenv("BNADAPT_FIXTURES");
  if (dir == nullptr) GTEST_SKIP() << "BNADAPT_FIXTURES is not set (the fixtures folder)";
  const std::vector<char> good = readAll(std::string(dir) + "/mlp_scripted.pt");
  ASSERT_GT(good.size(), 1000u);
  const fs::path tmp = fs::temp_directory_path() / ("bnadapt_hostile_" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  std::mt19937_64 rng(20261122);
  int loaded = 0, refused = 0;
  for (int k = 0; k < 200; ++k) {
    std::vector<char> bytes = good;
    if (k < 100) {  // truncated at 100 lengths spread over the file
      bytes.resize(good.size() * static_cast<size_t>(k) / 100);
    } else {        // 1 to 8 bits flipped anywhere
      const int flips = 1 + static_cast<int>(rng() % 8);
      for (int f = 0; f < flips; ++f) {
        bytes[rng() % bytes.size()] ^= static_cast<char>(1u << (rng() % 8));
      }
    }
    const std::string path = (tmp / ("m" + std::to_string(k) + ".pt")).string();
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    try {
      AdaptableModel model(path);
      ++loaded;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kModel) << k << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << k << ": " << e.what();
      ++refused;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "model " << k << ": unexpected exception: " << e.what();
    }
  }
  fs::remove_all(tmp);
  std::printf("hostile models: %d refused with a clean error, %d loaded\n", refused, loaded);
  EXPECT_EQ(refused + loaded, 200);
  EXPECT_GE(refused, 100);  // every truncation is refused
}

}  // namespace
}  // namespace bnadapt::model
