#include "io/stats_file.h"

#include <cstdint>
#include <functional>

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>

#include "common/error.h"
#include "torchfile/pickle_walker.h"

namespace bnadapt::io {
namespace {

// The few pickle (protocol 2) opcodes a dict of tensors needs, written as torch.save does.
class PickleWriter {
 public:
  std::string bytes;

  void proto() { bytes += "\x80\x02"; }
  void stop() { bytes += '.'; }
  void mark() { bytes += '('; }
  void tuple() { bytes += 't'; }
  void emptyTuple() { bytes += ')'; }
  void reduce() { bytes += 'R'; }
  void setItems() { bytes += 'u'; }
  void binPersId() { bytes += 'Q'; }
  void newFalse() { bytes += '\x89'; }
  void global(const std::string& module, const std::string& name) {
    bytes += 'c' + module + '\n' + name + '\n';
  }
  void string(const std::string& s) {  // BINUNICODE: 4-byte little-endian length, UTF-8
    bytes += 'X';
    appendLE(static_cast<uint32_t>(s.size()), 4);
    bytes += s;
  }
  void integer(int64_t v) {
    if (v >= INT32_MIN && v <= INT32_MAX) {  // BININT: 4-byte signed
      bytes += 'J';
      appendLE(static_cast<uint32_t>(static_cast<int32_t>(v)), 4);
    } else {  // LONG1: 8 two's-complement bytes
      bytes += "\x8a\x08";
      appendLE(static_cast<uint64_t>(v), 8);
    }
  }
  void intTuple(at::IntArrayRef values) {
    mark();
    for (int64_t v : values) integer(v);
    tuple();
  }

 private:
  void appendLE(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) bytes += static_cast<char>((v >> (8 * i)) & 0xff);
  }
};

}  // namespace

std::string serializeStats(const NamedTensors& tensors) {
  // torch.save's layout: data.pkl holds an OrderedDict of
  // torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks), each
  // storage a persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel) whose bytes
  // are the record data/<key>. Only globals that torch.load(weights_only=True) allows.
  std::vector<at::Tensor> storages;
  PickleWriter p;
  p.proto();
  p.global("collections", "OrderedDict");
  p.emptyTuple();
  p.reduce();
  p.mark();
  for (const auto& [name, tensor] : tensors) {
    at::Tensor t = tensor.detach().cpu().contiguous().clone();
    // The legacy storage class of the dtype ("torch.FloatStorage"), as torch.save names it;
    // torch.load(weights_only=True) accepts exactly these.
    const torchfile::DtypeInfo* dtype = torchfile::dtypeByType(t.scalar_type());
    BNA_CHECK(dtype != nullptr && !dtype->storage.empty(), ExitCode::kInternal, "stats tensor '",
              name, "' has dtype ", t.scalar_type(), ", which the stats file does not write");
    const size_t dot = dtype->storage.rfind('.');
    p.string(name);
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.mark();
    p.mark();
    p.string("storage");
    p.global(std::string(dtype->storage.substr(0, dot)), std::string(dtype->storage.substr(dot + 1)));
    p.string(std::to_string(storages.size()));
    p.string("cpu");
    p.integer(t.numel());
    p.tuple();
    p.binPersId();
    p.integer(0);  // storage offset
    p.intTuple(t.sizes());
    p.intTuple(t.strides());
    p.newFalse();  // requires_grad
    p.global("collections", "OrderedDict");
    p.emptyTuple();
    p.reduce();  // backward hooks: an empty OrderedDict
    p.tuple();
    p.reduce();
    storages.push_back(std::move(t));
  }
  p.setItems();
  p.stop();

  std::string out;
  caffe2::serialize::PyTorchStreamWriter writer([&out](const void* data, size_t n) -> size_t {
    out.append(static_cast<const char*>(data), n);
    return n;
  });
  writer.writeRecord("data.pkl", p.bytes.data(), p.bytes.size());
  writer.writeRecord("byteorder", "little", 6);
  for (size_t i = 0; i < storages.size(); ++i) {
    const at::Tensor& t = storages[i];
    writer.writeRecord("data/" + std::to_string(i), t.data_ptr(),
                       static_cast<size_t>(t.numel()) * t.element_size());
  }
  writer.writeEndOfFile();
  return out;
}

}  // namespace bnadapt::io
