// What torch 2.x's torch.save writes: _rebuild_tensor_v3 on untyped storages (uint16,
// float8, ...), tensors rebuilt through _rebuild_from_type_v2, and records aligned to more
// than 64 bytes (storage_alignment, with its .storage_alignment record). The walker, the
// checkpoint patcher and the tensor-file reader must all handle them.
//
// Torch2Saved.* also check files written by Python's torch.save and the patched files with
// Python's torch.load; they need BNADAPT_PYTHON (a Python with torch >= 2.7) and
// BNADAPT_FIXTURE_SCRIPTS (tests/fixtures), and skip, saying so, without them.
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <torch/serialize.h>

#include "checkpoint/checkpoint.h"
#include "torchfile/pickle_walker.h"
#include "checkpoint/zip_patch.h"
#include "common/error.h"
#include "common/torch_compat.h"
#include "data/dataset.h"
#include "data/sources.h"

namespace bnadapt {
namespace {

namespace fs = std::filesystem;
using torchfile::TensorRecord;

// ---- hand-written pickles (protocol 2, as torch.save writes them) ---------------------------

std::string bu(const std::string& s) {  // BINUNICODE
  std::string out = "X";
  for (int i = 0; i < 4; ++i) out += char((s.size() >> (8 * i)) & 0xff);
  return out + s;
}
std::string k(int v) { return std::string("K") + char(v); }  // BININT1

// The arguments (storage, 0, (numel,), (1,), False, OrderedDict()[, dtype]) of a 1-d tensor on
// storage record `key` of class `storage_class` ("torch.storage\nUntypedStorage"), whose
// persistent id states `stored` elements of that class.
std::string tensorArgs(const std::string& key, const std::string& storage_class, int stored,
                       int numel, const std::string& dtype = "") {
  std::string args = "((" + bu("storage") + "c" + storage_class + "\n" + bu(key) + bu("cpu") +
                     k(stored) + "tQ" + k(0) + k(numel) + "\x85" + k(1) + "\x85" + "\x89" +
                     "ccollections\nOrderedDict\n)R";
  if (!dtype.empty()) args += "ctorch\n" + dtype + "\n";
  return args + "t";
}
std::string v2(const std::string& key, const std::string& storage_class, int numel) {
  return "ctorch._utils\n_rebuild_tensor_v2\n" + tensorArgs(key, storage_class, numel, numel) + "R";
}
std::string v3(const std::string& key, int nbytes, int numel, const std::string& dtype) {
  return "ctorch._utils\n_rebuild_tensor_v3\n" +
         tensorArgs(key, "torch.storage\nUntypedStorage", nbytes, numel, dtype) + "R";
}
// A tensor with a Python attribute: _rebuild_from_type_v2(func, type, args, state).
std::string fromTypeV3(const std::string& key, int nbytes, int numel, const std::string& dtype) {
  return "ctorch._tensor\n_rebuild_from_type_v2\n(ctorch._utils\n_rebuild_tensor_v3\n"
         "ctorch\nTensor\n" +
         tensorArgs(key, "torch.storage\nUntypedStorage", nbytes, numel, dtype) + "}" +
         bu("note") + k(1) + "stR";
}

// {"model": {"bn.running_mean": v3 float32 on an untyped storage, "bn.running_var": v2,
//  "codes": v3 uint16, "scale": float8 with an attribute, "odd": v3 of a dtype unknown here}}
std::string torch2Pickle() {
  return std::string("\x80\x02}(") + bu("model") + "}(" +                       //
         bu("bn.running_mean") + v3("0", 16, 4, "float32") +                   //
         bu("bn.running_var") + v2("1", "torch\nFloatStorage", 4) +            //
         bu("codes") + v3("2", 10, 5, "uint16") +                              //
         bu("scale") + fromTypeV3("3", 3, 3, "float8_e4m3fn") +                //
         bu("odd") + v3("4", 6, 6, "float99") + "uu.";
}

TEST(Torch2Pickle, RebuildTensorV3AndRebuildFromType) {
  torchfile::UnpickleResult r = torchfile::unpickle(torch2Pickle(), "torch2");
  EXPECT_EQ(r.tensors.size(), 5u);
  std::vector<torchfile::DictNode> dicts = torchfile::tensorDicts(r);
  ASSERT_EQ(dicts.size(), 1u);
  std::map<std::string, const TensorRecord*> t(dicts[0].tensors.begin(), dicts[0].tensors.end());
  ASSERT_EQ(t.size(), 5u);
  const TensorRecord& mean = *t.at("bn.running_mean");
  EXPECT_EQ(mean.dtype, c10::kFloat);
  EXPECT_EQ(mean.storage_type, "torch.storage.UntypedStorage");
  EXPECT_EQ(mean.type_name, "torch.float32");
  EXPECT_EQ(mean.storage_numel, 4);  // 16 bytes of float32
  EXPECT_EQ(mean.sizes, (std::vector<int64_t>{4}));
  EXPECT_EQ(t.at("bn.running_var")->type_name, "torch.float32");
  EXPECT_EQ(t.at("bn.running_var")->storage_numel, 4);
  const TensorRecord& codes = *t.at("codes");
  EXPECT_EQ(codes.dtype, c10::ScalarType::Undefined);  // copied, never patched
  EXPECT_EQ(codes.type_name, "torch.uint16");
  EXPECT_EQ(codes.storage_numel, 5);
  EXPECT_EQ(codes.storage_key, "2");
  const TensorRecord& scale = *t.at("scale");
  EXPECT_EQ(scale.type_name, "torch.float8_e4m3fn");
  EXPECT_EQ(scale.storage_numel, 3);
  EXPECT_EQ(scale.storage_key, "3");
  EXPECT_EQ(t.at("odd")->storage_numel, -1);  // the size of a torch.float99 is unknown
  EXPECT_EQ(torchfile::dtypeByStorage("torch.storage.UntypedStorage")->type, c10::kByte);
  EXPECT_EQ(torchfile::dtypeByName("torch.uint16")->size, 2);
  EXPECT_EQ(torchfile::dtypeByName("torch.float99"), nullptr);
}

TEST(Torch2Pickle, MalformedV3IsAnErrorNamingTheCall) {
  // The 7th argument (the dtype) is missing.
  const std::string p = std::string("\x80\x02") + "ctorch._utils\n_rebuild_tensor_v3\n" +
                        tensorArgs("0", "torch.storage\nUntypedStorage", 4, 4) + "R.";
  try {
    torchfile::unpickle(p, "bad.pkl");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kCheckpoint);
    EXPECT_NE(std::string(e.what()).find("bad.pkl"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("_rebuild_tensor_v3"), std::string::npos) << e.what();
  }
}

// ---- archives --------------------------------------------------------------------------

using Records = std::vector<std::pair<std::string, std::string>>;  // in archive order

// A torch.save-like zip of `records`, its data aligned to `alignment` bytes.
std::string zipOf(const Records& records, uint64_t alignment) {
  std::string out;
  auto writer = compat::makeStreamWriter(
      [&out](const void* data, size_t n) {
        out.append(static_cast<const char*>(data), n);
        return n;
      },
      alignment);
  for (const auto& [name, bytes] : records) writer->writeRecord(name, bytes.data(), bytes.size());
  writer->writeEndOfFile();
  return out;
}

// The records of a zip (without version and serialization id), and each one's data offset.
struct Archive {
  std::map<std::string, std::string> records;
  std::map<std::string, uint64_t> offsets;
  std::vector<std::string> order;
};
Archive readZip(const std::string& path) {
  caffe2::serialize::PyTorchStreamReader reader(path);
  Archive a;
  for (const std::string& name : reader.getAllRecords()) {
    auto [ptr, size] = reader.getRecord(name);
    a.records[name].assign(static_cast<const char*>(ptr.get()), size);
    a.offsets[name] = reader.getRecordOffset(name);
    a.order.push_back(name);
  }
  return a;
}

// Every member's CRC-32 (central directory, local header, data descriptor) matches its data.
void expectCrcsRight(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << path;
  try {
    const std::vector<checkpoint::zip::Member> members = checkpoint::zip::members(fd, path);
    EXPECT_FALSE(members.empty());
    for (const auto& m : members) checkpoint::zip::checkCrc(fd, path, m);
  } catch (const Error& e) {
    ADD_FAILURE() << e.what();
  }
  ::close(fd);
}

std::string bytesOf(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

class Torch2Files : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("bnadapt_torch2_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::string write(const std::string& name, const std::string& bytes) const {
    std::ofstream(path(name), std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path(name);
  }

  // torch2Pickle()'s checkpoint as torch 2.x lays it out, aligned to `alignment`.
  std::string torch2Checkpoint(uint64_t alignment) const {
    const std::string stated = std::to_string(alignment);
    return zipOf({{"data.pkl", torch2Pickle()},
                  {".format_version", "1"},
                  {".storage_alignment", stated},
                  {"byteorder", "little"},
                  {"data/0", bytesOf(at::tensor({1.0f, 2.0f, 3.0f, 4.0f}))},
                  {"data/1", bytesOf(at::ones({4}))},
                  {"data/2", std::string("\x01\x00\x02\x00\x03\x00\x04\x00\x05\x00", 10)},
                  {"data/3", "\x38\x40\xc8"},
                  {"data/4", "abcdef"}},
                 alignment);
  }

  fs::path dir_;
};

const std::vector<checkpoint::ExpectedBuffer> kBn = {{"bn.running_mean", {4}, true},
                                                     {"bn.running_var", {4}, true}};

TEST_F(Torch2Files, PatchesV3BuffersAndCopiesTheRest) {
  const std::string in = write("in.pt", torch2Checkpoint(64));
  auto ckpt = checkpoint::openCheckpoint(in);
  ckpt->plan(kBn, "");
  ckpt->write(path("out.pt"), {{"bn.running_mean", at::tensor({0.5, -1.5, 2.0, 8.0})}}, 0);
  const Archive a = readZip(in);
  const Archive b = readZip(path("out.pt"));
  EXPECT_EQ(b.records.at("data/0"), bytesOf(at::tensor({0.5f, -1.5f, 2.0f, 8.0f})));
  for (const auto& [name, bytes] : a.records) {
    if (name == "data/0") continue;
    // .data/serialization_id included: LibTorch 2.x's writer writes an id of its own (see
    // makeStreamWriter), which write() replaces with the input's.
    EXPECT_EQ(b.records.at(name), bytes) << name;
  }
  EXPECT_EQ(b.order, a.order);
  EXPECT_EQ(a.records.count(".data/serialization_id"), b.records.count(".data/serialization_id"));
  expectCrcsRight(path("out.pt"));
}

TEST_F(Torch2Files, RefusesToPatchADtypeItCannotWrite) {
  auto ckpt = checkpoint::openCheckpoint(write("in.pt", torch2Checkpoint(64)));
  try {
    ckpt->plan({{"codes", {5}, true}}, "");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'codes' is stored as torch.uint16"), std::string::npos)
        << e.what();
  }
}

TEST_F(Torch2Files, KeepsA4096RecordAlignment) {
  if (compat::streamWriterAlignment(4096) != 4096) {
    GTEST_SKIP() << "LibTorch " << compat::kTorchVersion << " writes 64-byte alignment only";
  }
  const std::string in = write("in.pt", torch2Checkpoint(4096));
  auto ckpt = checkpoint::openCheckpoint(in);
  ckpt->plan(kBn, "");
  ckpt->write(path("out.pt"), {{"bn.running_var", at::full({4}, 3.0)}}, 0);
  const Archive b = readZip(path("out.pt"));
  EXPECT_EQ(b.records.at(".storage_alignment"), "4096");
  EXPECT_EQ(b.records.at("data/1"), bytesOf(at::full({4}, 3.0f)));
  for (const auto& [name, offset] : b.offsets) EXPECT_EQ(offset % 4096, 0u) << name;
  const Archive a = readZip(in);
  EXPECT_EQ(b.order, a.order);
  if (a.records.count(".data/serialization_id")) {
    EXPECT_EQ(b.records.at(".data/serialization_id"), a.records.at(".data/serialization_id"));
  }
  expectCrcsRight(path("out.pt"));
}

TEST_F(Torch2Files, ABadAlignmentRecordNamesFileAndRecord) {
  Records records = {{"data.pkl", torch2Pickle()}, {".storage_alignment", "4k"}};
  const std::string in = write("in.pt", zipOf(records, 64));
  try {
    checkpoint::openCheckpoint(in);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kCheckpoint);
    const std::string msg = e.what();
    EXPECT_NE(msg.find(in), std::string::npos) << msg;
    EXPECT_NE(msg.find("'.storage_alignment' holds '4k'"), std::string::npos) << msg;
  }
}

// A tensor file whose records are 4096-aligned: the zip header is far more than the 64-byte
// default before the data.
TEST_F(Torch2Files, TensorDataWith4096AlignedRecords) {
  if (compat::streamWriterAlignment(4096) != 4096) {
    GTEST_SKIP() << "LibTorch " << compat::kTorchVersion << " writes 64-byte alignment only";
  }
  c10::Dict<std::string, at::Tensor> d;
  const at::Tensor inputs = at::arange(24, at::kFloat).view({4, 6}) / 4;
  d.insert("inputs", inputs);
  d.insert("labels", at::arange(4, at::kLong));
  const std::vector<char> saved = torch::pickle_save(d);
  std::istringstream stream(std::string(saved.begin(), saved.end()));
  caffe2::serialize::PyTorchStreamReader reader(&stream);
  Records records;
  for (const std::string& name : reader.getAllRecords()) {
    if (name == "version" || name == ".data/version" || name == ".data/serialization_id") continue;
    auto [ptr, size] = reader.getRecord(name);
    records.emplace_back(name, std::string(static_cast<const char*>(ptr.get()), size));
  }
  records.emplace_back(".storage_alignment", "4096");
  const std::string file = write("aligned.pt", zipOf(records, 4096));
  auto ds = data::openTensorData(file);
  ASSERT_EQ(ds->size(), 4);
  for (int64_t i = 0; i < 4; ++i) {
    at::Tensor sample = at::empty({6});
    EXPECT_EQ(ds->read(i, sample.data_ptr()), i);
    EXPECT_TRUE(at::equal(sample, inputs[i])) << i;
  }
}

// ---- zip_patch on hand-made archives ----------------------------------------------------

std::string le(uint64_t v, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += char((v >> (8 * i)) & 0xff);
  return out;
}

// One stored member with a data descriptor (as miniz writes them), its central directory entry
// stating the local header offset in a ZIP64 extra field, and ZIP64 end records.
std::string zip64Archive(const std::string& name, const std::string& data) {
  const uint32_t crc = checkpoint::zip::crc32(data);
  std::string z = le(0x04034b50, 4) + le(0, 2) + le(0x0808, 2) + le(0, 2) + le(0, 4) +
                  le(0, 4) + le(0, 4) + le(0, 4) + le(name.size(), 2) + le(0, 2) + name + data +
                  le(0x08074b50, 4) + le(crc, 4) + le(data.size(), 4) + le(data.size(), 4);
  const uint64_t cd = z.size();
  z += le(0x02014b50, 4) + le(45, 2) + le(45, 2) + le(0x0808, 2) + le(0, 2) + le(0, 4) +
       le(crc, 4) + le(data.size(), 4) + le(data.size(), 4) + le(name.size(), 2) + le(12, 2) +
       le(0, 2) + le(0, 2) + le(0, 2) + le(0, 4) + le(0xffffffff, 4) + name + le(1, 2) +
       le(8, 2) + le(0, 8);
  const uint64_t cd_size = z.size() - cd;
  const uint64_t eocd64 = z.size();
  z += le(0x06064b50, 4) + le(44, 8) + le(45, 2) + le(45, 2) + le(0, 4) + le(0, 4) + le(1, 8) +
       le(1, 8) + le(cd_size, 8) + le(cd, 8);
  z += le(0x07064b50, 4) + le(0, 4) + le(eocd64, 8) + le(1, 4);
  z += le(0x06054b50, 4) + le(0, 2) + le(0, 2) + le(0xffff, 2) + le(0xffff, 2) +
       le(0xffffffff, 4) + le(0xffffffff, 4) + le(0, 2);
  return z;
}

TEST_F(Torch2Files, ZipPatchHandlesZip64RecordsAndDataDescriptors) {
  const std::string old_id(40, '1'), new_id = "0123456789012345678901234567890123456789";
  const std::string file = write("z64.zip", zip64Archive("archive/.data/serialization_id", old_id));
  const int fd = ::open(file.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  auto members = checkpoint::zip::members(fd, file);
  ASSERT_EQ(members.size(), 1u);
  EXPECT_EQ(members[0].name, "archive/.data/serialization_id");
  EXPECT_EQ(members[0].local_header, 0u);
  EXPECT_EQ(checkpoint::zip::readData(fd, file, members[0]), old_id);
  checkpoint::zip::overwriteData(fd, file, members[0], new_id);
  members = checkpoint::zip::members(fd, file);
  EXPECT_EQ(checkpoint::zip::readData(fd, file, members[0]), new_id);
  EXPECT_EQ(members[0].crc, checkpoint::zip::crc32(new_id));
  EXPECT_NO_THROW(checkpoint::zip::checkCrc(fd, file, members[0]));
  ::close(fd);
  // Python's zipfile agrees (PyTorchStreamReader would want a version record).
  if (const char* python = std::getenv("BNADAPT_PYTHON")) {
    const std::string cmd = std::string("'") + python + "' -c \"import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); sys.exit(z.testzip() is not None or z.read('archive/.data/serialization_id') != sys.argv[2].encode())\" '" + file + "' " + new_id;
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
}

TEST_F(Torch2Files, ZipPatchRefusesAnInconsistentArchiveNamingIt) {
  std::string z = zip64Archive("archive/.data/serialization_id", std::string(40, '1'));
  z[30 + 30 + 40 + 4] ^= 1;  // the data descriptor's CRC no longer matches
  const std::string file = write("bad.zip", z);
  const int fd = ::open(file.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  const auto members = checkpoint::zip::members(fd, file);
  ASSERT_EQ(members.size(), 1u);
  try {
    checkpoint::zip::overwriteData(fd, file, members[0], std::string(40, '2'));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kInternal);
    EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();
  }
  EXPECT_EQ(checkpoint::zip::readData(fd, file, members[0]), std::string(40, '1'));  // untouched
  ::close(fd);
  // No end-of-central-directory record at all.
  const std::string cut = write("cut.zip", z.substr(0, z.size() - 22));
  const int fd2 = ::open(cut.c_str(), O_RDONLY);
  ASSERT_GE(fd2, 0);
  try {
    checkpoint::zip::members(fd2, cut);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kInternal);
    EXPECT_NE(std::string(e.what()).find(cut), std::string::npos) << e.what();
  }
  ::close(fd2);
}

// ---- files from Python's torch.save, checked with Python's torch.load --------------------

class Torch2Saved : public Torch2Files {
 protected:
  void SetUp() override {
    const char* python = std::getenv("BNADAPT_PYTHON");
    const char* scripts = std::getenv("BNADAPT_FIXTURE_SCRIPTS");
    if (python == nullptr || scripts == nullptr) {
      GTEST_SKIP() << "BNADAPT_PYTHON and BNADAPT_FIXTURE_SCRIPTS are not set (a Python with "
                      "torch >= 2.7, and tests/fixtures)";
    }
    Torch2Files::SetUp();
    command_ = std::string("'") + python + "' '" + scripts + "/make_torch2_checkpoints.py'";
    const int rc = run("make '" + dir_.string() + "'");
    if (rc == 77) GTEST_SKIP() << "the Python's torch is older than 2.7";
    ASSERT_EQ(rc, 0) << "the fixture generator failed";
  }
  int run(const std::string& args) const {
    const int status = std::system((command_ + " " + args).c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  std::string command_;
};

TEST_F(Torch2Saved, PatchedCheckpointsLoadInTorch) {
  for (const std::string name : {"ckpt", "ckpt_4096"}) {
    SCOPED_TRACE(name);
    const std::string in = path(name + ".pt");
    const std::string out = path(name + "_patched.pt");
    auto ckpt = checkpoint::openCheckpoint(in);
    ckpt->plan({{"1.running_mean", {4}, true},
                {"1.running_var", {4}, true},
                {"1.num_batches_tracked", {}, false}},
               "");
    ckpt->write(out, {{"1.running_mean", at::tensor({1.5, -0.25, 4.0, 0.125})}}, 0);
    // The check also wants OUT's serialization id to be IN's and zipfile's testzip() to pass.
    EXPECT_EQ(run("check '" + in + "' '" + out + "' model/1.running_mean 1.5,-0.25,4,0.125"), 0);
    const Archive a = readZip(in);
    const Archive b = readZip(out);
    ASSERT_EQ(a.records.count(".data/serialization_id"), 1u);
    ASSERT_EQ(b.records.count(".data/serialization_id"), 1u);
    EXPECT_EQ(b.records.at(".data/serialization_id"), a.records.at(".data/serialization_id"));
    expectCrcsRight(out);
  }
}

TEST_F(Torch2Saved, TensorDataAtAnyAlignment) {
  for (const std::string name : {"data", "data_4096"}) {
    SCOPED_TRACE(name);
    auto ds = data::openTensorData(path(name + ".pt"));
    ASSERT_EQ(ds->size(), 6);
    for (int64_t i = 0; i < 6; ++i) {
      at::Tensor sample = at::empty({3, 2, 2});
      EXPECT_EQ(ds->read(i, sample.data_ptr()), i % 3);
      EXPECT_TRUE(at::equal(sample, at::arange(12 * i, 12 * (i + 1), at::kFloat).view({3, 2, 2}) / 8))
          << i;
    }
  }
}

}  // namespace
}  // namespace bnadapt
