// The data sources (tensor files and shards, image folders, synthetic), format inference,
// the sample order and the prefetching loader.
#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <torch/serialize.h>

#include "common/error.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/sharding.h"
#include "data/sources.h"

namespace bnadapt::data {
namespace {

namespace fs = std::filesystem;

// The Error(code) a call throws, with its message; fails the test when it does not throw.
template <typename F>
std::string errorOf(F&& f, ExitCode code) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return "";
}

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("bnadapt_data_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  void save(const c10::IValue& value, const std::string& name) const {
    const std::vector<char> bytes = torch::pickle_save(value);
    fs::create_directories(fs::path(path(name)).parent_path());
    std::ofstream(path(name), std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  static c10::IValue dict(const at::Tensor& inputs, const at::Tensor& labels) {
    c10::Dict<std::string, at::Tensor> d;
    d.insert("inputs", inputs);
    if (labels.defined()) d.insert("labels", labels);
    return d;
  }

  fs::path dir_;
};

at::Tensor readSample(const Dataset& ds, int64_t i, int64_t* label = nullptr) {
  at::Tensor out = at::empty(ds.sampleShape(), ds.dtype());
  const int64_t l = ds.read(i, out.data_ptr());
  if (label) *label = l;
  return out;
}

// ---- tensor files --------------------------------------------------------------------------

using TensorData = TempDir;

TEST_F(TensorData, PlainTensorSamplesInOrder) {
  const at::Tensor t = at::arange(10 * 2 * 3, at::kFloat).reshape({10, 2, 3});
  save(t, "x.pt");
  const auto ds = openDataset(path("x.pt"), {});
  EXPECT_EQ(ds->size(), 10);
  EXPECT_EQ(ds->sampleShape(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ds->dtype(), at::kFloat);
  EXPECT_FALSE(ds->hasLabels());
  for (int64_t i : {0, 3, 9}) {
    int64_t label = 0;
    EXPECT_TRUE(at::equal(readSample(*ds, i, &label), t[i]));
    EXPECT_EQ(label, -1);
  }
  EXPECT_EQ(ds->sampleName(4), path("x.pt") + "[4]");
}

TEST_F(TensorData, DictWithLabelsAndViewsOfALargerStorage) {
  const at::Tensor base = at::randn({12, 4}, at::kDouble);
  const at::Tensor inputs = base.narrow(0, 2, 8);  // a view at a storage offset
  save(dict(inputs, at::arange(8, at::kInt) % 3), "d.pt");
  const auto ds = openDataset(path("d.pt"), {});
  EXPECT_EQ(ds->dtype(), at::kDouble);  // float64 stays float64
  ASSERT_TRUE(ds->hasLabels());
  for (int64_t i = 0; i < 8; ++i) {
    int64_t label = -1;
    EXPECT_TRUE(at::equal(readSample(*ds, i, &label), inputs[i]));
    EXPECT_EQ(label, i % 3);
  }
}

TEST_F(TensorData, HalfAndBFloat16BecomeFloat32) {
  for (auto dtype : {at::kHalf, at::kBFloat16}) {
    const at::Tensor t = at::randn({5, 7}).to(dtype);
    save(t, "h.pt");
    const auto ds = openDataset(path("h.pt"), {});
    EXPECT_EQ(ds->dtype(), at::kFloat);
    EXPECT_TRUE(at::equal(readSample(*ds, 3), t[3].to(at::kFloat)));
  }
}

TEST_F(TensorData, ShardsOfDifferentSizesReadAsOne) {
  const at::Tensor all = at::randn({12, 3});
  // Sorted by name: a (4), b (7), c (1); other files are not shards.
  save(dict(all.narrow(0, 0, 4).clone(), at::zeros({4}, at::kLong)), "shards/a.pt");
  save(dict(all.narrow(0, 4, 7).clone(), at::ones({7}, at::kLong)), "shards/b.pt");
  save(dict(all.narrow(0, 11, 1).clone(), at::full({1}, 2, at::kLong)), "shards/c.pth");
  std::ofstream(path("shards/README.txt")) << "not a shard";
  EXPECT_EQ(inferFormat(path("shards")), DataFormat::kTensor);
  const auto ds = openDataset(path("shards"), {});
  ASSERT_EQ(ds->size(), 12);
  for (int64_t i = 0; i < 12; ++i) {
    int64_t label = -1;
    EXPECT_TRUE(at::equal(readSample(*ds, i, &label), all[i])) << i;
    EXPECT_EQ(label, i < 4 ? 0 : i < 11 ? 1 : 2) << i;
  }
  EXPECT_EQ(ds->sampleName(5), path("shards/b.pt") + "[1]");
}

TEST_F(TensorData, ShardsMustAgree) {
  save(at::zeros({2, 3}), "s1/a.pt");
  save(at::zeros({2, 4}), "s1/b.pt");
  EXPECT_NE(errorOf([&] { openDataset(path("s1"), {}); }, ExitCode::kData)
                .find("has samples of shape [4]"),
            std::string::npos);
  save(dict(at::zeros({2, 3}), at::zeros({2}, at::kLong)), "s2/a.pt");
  save(at::zeros({2, 3}), "s2/b.pt");
  EXPECT_NE(errorOf([&] { openDataset(path("s2"), {}); }, ExitCode::kData).find("labels"),
            std::string::npos);
}

TEST_F(TensorData, HashFollowsContent) {
  save(at::zeros({4, 3}), "a.pt");
  save(at::zeros({4, 3}), "b.pt");
  at::Tensor other = at::zeros({4, 3});
  other[3][2] = 1;
  save(other, "c.pt");
  const uint64_t a = openDataset(path("a.pt"), {})->contentHash();
  EXPECT_EQ(a, openDataset(path("b.pt"), {})->contentHash());
  EXPECT_NE(a, openDataset(path("c.pt"), {})->contentHash());
}

TEST_F(TensorData, BadFilesNameTheProblem) {
  save(at::zeros({4, 3}, at::kLong), "int.pt");
  EXPECT_NE(errorOf([&] { openDataset(path("int.pt"), {}); }, ExitCode::kData)
                .find("expected a floating-point tensor"),
            std::string::npos);
  save(at::zeros({4}), "flat.pt");
  EXPECT_NE(errorOf([&] { openDataset(path("flat.pt"), {}); }, ExitCode::kData)
                .find("at least 2 dimensions"),
            std::string::npos);
  save(at::zeros({3, 4}).t(), "view.pt");
  EXPECT_NE(errorOf([&] { openDataset(path("view.pt"), {}); }, ExitCode::kData)
                .find("non-contiguous"),
            std::string::npos);
  c10::Dict<std::string, at::Tensor> no_inputs;
  no_inputs.insert("x", at::zeros({2, 2}));
  save(no_inputs, "noinputs.pt");
  EXPECT_NE(errorOf([&] { openDataset(path("noinputs.pt"), {}); }, ExitCode::kData)
                .find("without an \"inputs\" key"),
            std::string::npos);
  save(dict(at::zeros({3, 2}), at::zeros({2}, at::kLong)), "labels.pt");
  EXPECT_NE(errorOf([&] { openDataset(path("labels.pt"), {}); }, ExitCode::kData)
                .find("expected an integer tensor [3]"),
            std::string::npos);
  std::ofstream(path("empty.pt"));
  EXPECT_NE(errorOf([&] { openDataset(path("empty.pt"), {}); }, ExitCode::kData).find("empty"),
            std::string::npos);
  std::ofstream(path("legacy.pt")) << "\x80\x02legacy pickle";
  EXPECT_NE(errorOf([&] { openDataset(path("legacy.pt"), {}); }, ExitCode::kData)
                .find("not a torch.save zip archive"),
            std::string::npos);
}

TEST_F(TensorData, TruncatedFileIsAnError) {
  save(at::randn({64, 64}), "t.pt");
  const auto size = fs::file_size(path("t.pt"));
  std::vector<char> bytes(size);
  std::ifstream(path("t.pt"), std::ios::binary).read(bytes.data(), static_cast<std::streamsize>(size));
  std::ofstream(path("cut.pt"), std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(size / 2));
  errorOf([&] { openDataset(path("cut.pt"), {}); }, ExitCode::kData);
}

TEST_F(TensorData, SampleShapeMustMatchTheConfig) {
  save(at::zeros({4, 3, 8, 8}), "x.pt");
  DataOptions o;
  o.sample_shape = {3, 8, 8};
  EXPECT_EQ(openDataset(path("x.pt"), o)->size(), 4);
  o.sample_shape = {3, 16, 16};
  EXPECT_NE(errorOf([&] { openDataset(path("x.pt"), o); }, ExitCode::kData)
                .find("input_info.sample_size expects [3, 16, 16]"),
            std::string::npos);
}

// ---- format inference ----------------------------------------------------------------------

using Inference = TempDir;

TEST_F(Inference, FromThePath) {
  EXPECT_EQ(inferFormat("synthetic"), DataFormat::kSynthetic);
  save(at::zeros({2, 2}), "file.bin");  // a zip without a .pt name
  EXPECT_EQ(inferFormat(path("file.bin")), DataFormat::kTensor);
  fs::create_directories(path("imgs/cat"));
  EXPECT_EQ(inferFormat(path("imgs")), DataFormat::kImageFolder);
  std::ofstream(path("train-images-idx3-ubyte.gz")) << "x";
  EXPECT_EQ(inferFormat(path("train-images-idx3-ubyte.gz")), DataFormat::kIdx);
  EXPECT_NE(errorOf([&] { inferFormat(path("missing")); }, ExitCode::kData).find("does not exist"),
            std::string::npos);
  fs::create_directories(path("empty"));
  EXPECT_NE(errorOf([&] { inferFormat(path("empty")); }, ExitCode::kData)
                .find("holds no .pt files and no class folders"),
            std::string::npos);
  fs::create_directories(path("flat"));
  std::ofstream(path("flat/a.jpg")) << "x";
  EXPECT_NE(errorOf([&] { inferFormat(path("flat")); }, ExitCode::kData).find("PATH/<class>/<image>"),
            std::string::npos);
  std::ofstream(path("notes.txt")) << "hello";
  EXPECT_NE(errorOf([&] { inferFormat(path("notes.txt")); }, ExitCode::kData)
                .find("cannot tell the format"),
            std::string::npos);
}

// ---- image folders -------------------------------------------------------------------------

using ImageFolder = TempDir;

void writeImage(const std::string& file, int rows, int cols, cv::Scalar bgr) {
  fs::create_directories(fs::path(file).parent_path());
  ASSERT_TRUE(cv::imwrite(file, cv::Mat(rows, cols, CV_8UC3, bgr)));
}

TEST_F(ImageFolder, ClassesSortedLabelsAndPreprocessing) {
  // Mixed sizes and formats; a nested folder; a non-image file that is ignored.
  writeImage(path("root/b_dog/2.png"), 40, 60, {0, 0, 255});  // red (BGR)
  writeImage(path("root/b_dog/1.jpg"), 50, 30, {0, 0, 255});
  writeImage(path("root/a_cat/x/0.png"), 33, 33, {255, 0, 0});  // blue
  writeImage(path("root/a_cat/9.png"), 20, 90, {255, 0, 0});
  std::ofstream(path("root/a_cat/notes.txt")) << "not an image";
  DataOptions o;
  o.sample_shape = {3, 16, 16};
  o.mean = {0.0f};
  o.std = {1.0f};
  const auto ds = openDataset(path("root"), o);
  ASSERT_EQ(ds->size(), 4);
  EXPECT_TRUE(ds->hasLabels());
  EXPECT_EQ(ds->sampleShape(), (std::vector<int64_t>{3, 16, 16}));
  // torchvision's order: a_cat/9.png, a_cat/x/0.png, b_dog/1.jpg, b_dog/2.png.
  EXPECT_EQ(ds->sampleName(0), path("root/a_cat/9.png"));
  EXPECT_EQ(ds->sampleName(1), path("root/a_cat/x/0.png"));
  EXPECT_EQ(ds->sampleName(2), path("root/b_dog/1.jpg"));
  EXPECT_NE(ds->describe().find("1 non-image file(s) ignored"), std::string::npos);
  for (int64_t i = 0; i < 4; ++i) {
    int64_t label = -1;
    const at::Tensor img = readSample(*ds, i, &label);
    EXPECT_EQ(label, i < 2 ? 0 : 1);
    const int64_t channel = i < 2 ? 2 : 0;  // blue or red
    EXPECT_NEAR(img[channel].mean().item<double>(), 1.0, 2.0 / 255);
    EXPECT_NEAR(img[1].abs().max().item<double>(), 0.0, 2.0 / 255);
  }
}

TEST_F(ImageFolder, DefaultsAreImageNetNormalisationAndCrop224) {
  writeImage(path("root/c/a.png"), 300, 400, {128, 128, 128});
  const auto ds = openDataset(path("root"), {});
  EXPECT_EQ(ds->sampleShape(), (std::vector<int64_t>{3, 224, 224}));
  EXPECT_NE(ds->describe().find("resized to 256"), std::string::npos);
  const at::Tensor img = readSample(*ds, 0);
  EXPECT_NEAR(img[0][100][100].item<float>(), (128 / 255.0 - 0.485) / 0.229, 1e-4);
  EXPECT_NEAR(img[2][100][100].item<float>(), (128 / 255.0 - 0.406) / 0.225, 1e-4);
}

TEST_F(ImageFolder, LayoutErrors) {
  fs::create_directories(path("noclasses"));
  std::ofstream(path("noclasses/a.txt")) << "x";
  EXPECT_NE(errorOf([&] { openImageFolder(path("noclasses"), {}); }, ExitCode::kData)
                .find("has no class folders"),
            std::string::npos);
  writeImage(path("holes/a/1.png"), 8, 8, {1, 2, 3});
  fs::create_directories(path("holes/b"));
  const std::string msg = errorOf([&] { openDataset(path("holes"), {}); }, ExitCode::kData);
  EXPECT_NE(msg.find("holes/b' holds no image files"), std::string::npos) << msg;
  writeImage(path("grey/a/1.png"), 8, 8, {1, 2, 3});
  DataOptions o;
  o.sample_shape = {1, 8, 8};
  EXPECT_NE(errorOf([&] { openDataset(path("grey"), o); }, ExitCode::kData).find("RGB samples"),
            std::string::npos);
  o.sample_shape = {3, 8, 8};
  o.mean = {0.5f, 0.5f};
  EXPECT_NE(errorOf([&] { openDataset(path("grey"), o); }, ExitCode::kUsage).find("--mean has 2"),
            std::string::npos);
}

TEST_F(ImageFolder, CorruptFilesAreNamed) {
  writeImage(path("root/a/good.png"), 8, 8, {1, 2, 3});
  std::ofstream(path("root/a/zero.jpg"));
  std::ofstream(path("root/a/text.jpg")) << "this is not a JPEG";
  const auto ds = openDataset(path("root"), {});
  ASSERT_EQ(ds->size(), 3);
  for (int64_t i : {1, 2}) {
    const std::string msg = errorOf([&] { readSample(*ds, i); }, ExitCode::kData);
    EXPECT_NE(msg.find(ds->sampleName(i)), std::string::npos) << msg;
  }
}

// ---- synthetic and order -------------------------------------------------------------------

TEST(Synthetic, SampleDependsOnlyOnSeedAndIndex) {
  const auto a = makeSynthetic({3, 4}, 100, 7);
  const auto b = makeSynthetic({3, 4}, 100, 7);
  const auto c = makeSynthetic({3, 4}, 100, 8);
  EXPECT_TRUE(at::equal(readSample(*a, 42), readSample(*b, 42)));
  EXPECT_FALSE(at::equal(readSample(*a, 42), readSample(*a, 43)));
  EXPECT_FALSE(at::equal(readSample(*a, 42), readSample(*c, 42)));
}

TEST(SampleOrder, IdentityOrSeededPermutation) {
  EXPECT_EQ(sampleOrder(5, false, 3), (std::vector<int64_t>{0, 1, 2, 3, 4}));
  const auto p = sampleOrder(1000, true, 3);
  EXPECT_EQ(p, sampleOrder(1000, true, 3));
  EXPECT_NE(p, sampleOrder(1000, true, 4));
  EXPECT_EQ(std::set<int64_t>(p.begin(), p.end()).size(), 1000u);
  EXPECT_EQ(*std::max_element(p.begin(), p.end()), 999);
  // Golden values: the generator is ours, so the order may never change between builds.
  EXPECT_EQ(sampleOrder(8, true, 0), (std::vector<int64_t>{2, 5, 0, 3, 4, 6, 1, 7}));
}

TEST(SampleOrder, BatchesFollowTheOrderAndPlanAllKeepsEverySample) {
  const BatchPlan plan = planBatches(7, 3, 10);  // rounded to 6
  const std::vector<int64_t> order = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0};
  EXPECT_EQ(batchSamples(plan, order, {1, 0}),
            (std::vector<std::vector<int64_t>>{{6, 5, 4}, {9, 8, 7}}));
  const BatchPlan all = planAll(7, 3);
  EXPECT_EQ(all.used, 7);
  EXPECT_EQ(all.num_batches, 3);
  EXPECT_EQ(all.batchRange(2), (std::pair<int64_t, int64_t>{6, 7}));
}

// ---- the loader ----------------------------------------------------------------------------

// Sample i is the value i (shape [2]); label i % 5; listed indices fail as corrupt ones do.
class FakeData : public Dataset {
 public:
  explicit FakeData(int64_t n, std::set<int64_t> bad = {}, bool slow = false)
      : n_(n), bad_(std::move(bad)), slow_(slow) {}
  int64_t size() const override { return n_; }
  std::vector<int64_t> sampleShape() const override { return {2}; }
  bool hasLabels() const override { return true; }
  int64_t read(int64_t index, void* out) const override {
    reads_++;
    const int now = ++active_;
    int seen = max_active_.load();
    while (now > seen && !max_active_.compare_exchange_weak(seen, now)) {}
    if (slow_) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    --active_;
    if (bad_.count(index)) fail(ExitCode::kData, "image '", sampleName(index), "' is corrupt");
    if (index == -7) throw std::runtime_error("never");
    auto* f = static_cast<float*>(out);
    f[0] = f[1] = static_cast<float>(index);
    return index % 5;
  }
  std::string sampleName(int64_t index) const override { return "s" + std::to_string(index); }
  std::string describe() const override { return "fake"; }
  uint64_t contentHash() const override { return 0; }

  mutable std::atomic<int> reads_{0}, active_{0}, max_active_{0};

 private:
  int64_t n_;
  std::set<int64_t> bad_;
  bool slow_;
};

TEST(Loader, DeliversBatchesInOrderWithLabels) {
  FakeData data(100, {}, /*slow=*/true);
  const std::vector<std::vector<int64_t>> batches = {{5, 3, 9}, {0}, {99, 98, 97, 96}, {1, 2}};
  LoaderOptions o;
  o.threads = 4;
  o.prefetch_batches = 2;
  Loader loader(data, batches, {10, 11, 12, 13}, o);
  Batch b;
  for (size_t k = 0; k < batches.size(); ++k) {
    ASSERT_TRUE(loader.next(b));
    EXPECT_EQ(b.id, static_cast<int64_t>(10 + k));
    EXPECT_EQ(b.requested, static_cast<int64_t>(batches[k].size()));
    ASSERT_EQ(b.inputs.size(0), static_cast<int64_t>(batches[k].size()));
    for (size_t j = 0; j < batches[k].size(); ++j) {
      EXPECT_EQ(b.inputs[static_cast<int64_t>(j)][1].item<float>(), batches[k][j]);
      EXPECT_EQ(b.labels[static_cast<int64_t>(j)].item<int64_t>(), batches[k][j] % 5);
    }
    EXPECT_TRUE(b.skipped.empty());
  }
  EXPECT_FALSE(loader.next(b));
  EXPECT_GE(data.max_active_.load(), 2);  // threads did read in parallel
}

TEST(Loader, WindowBoundsTheWorkAhead) {
  FakeData data(1000);
  std::vector<std::vector<int64_t>> batches;
  for (int64_t k = 0; k < 50; ++k) batches.push_back({2 * k, 2 * k + 1});
  LoaderOptions o;
  o.threads = 3;
  o.prefetch_batches = 2;
  Loader loader(data, batches, std::vector<int64_t>(50, 0), o);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_LE(data.reads_.load(), 2 * 2);  // nothing taken yet: at most 2 batches read
  Batch b;
  int n = 0;
  while (loader.next(b)) ++n;
  EXPECT_EQ(n, 50);
  EXPECT_EQ(data.reads_.load(), 100);
}

TEST(Loader, CorruptSampleFailsNamingIt) {
  FakeData data(20, {6});
  LoaderOptions o;
  o.threads = 2;
  Loader loader(data, {{0, 1}, {5, 6, 7}, {8}}, {0, 1, 2}, o);
  Batch b;
  ASSERT_TRUE(loader.next(b));
  const std::string msg = errorOf([&] { loader.next(b); }, ExitCode::kData);
  EXPECT_NE(msg.find("image 's6' is corrupt"), std::string::npos) << msg;
}  // the destructor stops the threads with batches pending

TEST(Loader, SkipCorruptLeavesThemOutWithExactCounts) {
  FakeData data(20, {1, 6, 7});
  LoaderOptions o;
  o.threads = 3;
  o.skip_corrupt = true;
  Loader loader(data, {{0, 1, 2}, {6, 7}, {8, 9}}, {0, 1, 2}, o);
  Batch b;
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(b.requested, 3);
  ASSERT_EQ(b.inputs.size(0), 2);
  EXPECT_EQ(b.inputs[1][0].item<float>(), 2.0f);
  EXPECT_EQ(b.labels[1].item<int64_t>(), 2);
  ASSERT_EQ(b.skipped.size(), 1u);
  EXPECT_NE(b.skipped[0].find("s1"), std::string::npos);
  ASSERT_TRUE(loader.next(b));  // every sample skipped: an empty batch
  EXPECT_EQ(b.inputs.size(0), 0);
  EXPECT_EQ(b.skipped.size(), 2u);
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(b.inputs.size(0), 2);
  EXPECT_FALSE(loader.next(b));
}

TEST(Loader, StopsEarlyWithoutHanging) {
  FakeData data(10000, {}, /*slow=*/true);
  std::vector<std::vector<int64_t>> batches(200, std::vector<int64_t>{1, 2, 3});
  LoaderOptions o;
  o.threads = 4;
  auto loader = std::make_unique<Loader>(data, batches, std::vector<int64_t>(200, 0), o);
  Batch b;
  ASSERT_TRUE(loader->next(b));
  loader.reset();  // joins promptly
  EXPECT_LT(data.reads_.load(), 3 * 10);
}

}  // namespace
}  // namespace bnadapt::data
