// A pickle reader for torch.save's data.pkl that builds a tree of values without running any
// Python: globals become names, calls (REDUCE, NEWOBJ) stay unevaluated, persistent ids stay
// as their tuples. Enough to find every tensor (torch._utils._rebuild_tensor_v2 calls on
// typed storages; _rebuild_tensor_v3, torch 2.x's form for dtypes without a legacy storage
// class such as uint16 or float8, on untyped ones; either wrapped in a Parameter or in
// torch._tensor._rebuild_from_type_v2) and the dict keys that lead to it, while any object
// the tool cannot construct (argparse.Namespace, numpy scalars, ...) is kept opaque.
// Protocols 0-5.
//
// Hostile input is expected: every read is bounds-checked, sizes are capped, and every
// problem is an Error(kCheckpoint) naming the file and byte offset. Never a crash.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <c10/core/ScalarType.h>

namespace bnadapt::torchfile {

struct PickleValue;
using PickleRef = std::shared_ptr<PickleValue>;
struct TensorRecord;

struct PickleValue {
  enum class Kind {
    kNone, kBool, kInt, kFloat, kString, kBytes,
    kTuple, kList, kDict, kSet,
    kGlobal,      // text = "module.name"
    kCall,        // items = {callable, args}; REDUCE and NEWOBJ
    kPersistent,  // items = {pid}
  };
  Kind kind = Kind::kNone;
  int64_t int_value = 0;   // kInt (values beyond int64 are flagged by big_int), kBool
  bool big_int = false;
  double float_value = 0;  // kFloat
  std::string text;        // kString, kBytes, kGlobal
  std::vector<PickleRef> items;                           // tuple/list/set, call, persistent
  std::vector<std::pair<PickleRef, PickleRef>> entries;   // SETITEM(S) on dicts and objects
  std::vector<PickleRef> states;                          // BUILD states, in order
  std::shared_ptr<const TensorRecord> tensor;  // set on the call that rebuilds a tensor

  PickleValue() = default;
  PickleValue(const PickleValue&) = delete;
  PickleValue& operator=(const PickleValue&) = delete;
  // Not recursive: the children it was the last owner of are freed in a loop (hostile
  // pickles nest millions deep, and any value may be dropped: POP, a replaced memo entry, an
  // error).
  ~PickleValue();
};

// A tensor as torch.save stores it: a view into a storage record.
struct TensorRecord {
  std::string storage_key;   // the record "data/<storage_key>"
  std::string storage_type;  // the storage class: "torch.FloatStorage", "torch.storage.UntypedStorage"
  std::string type_name;     // the tensor's dtype for messages: "torch.float16", "torch.uint16"
  // Undefined: a dtype the tool neither patches nor reads (uint16, float8, complex, ...); such
  // tensors are only ever copied byte for byte.
  c10::ScalarType dtype = c10::ScalarType::Undefined;
  // The storage's size in elements of the tensor's dtype; -1 when that dtype's size is unknown.
  int64_t storage_numel = 0;
  int64_t offset = 0;  // in elements
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
};

// A torch dtype as pickles name it. `type` is Undefined for the dtypes the tool does not
// handle (it still knows their element size).
struct DtypeInfo {
  std::string_view name;     // "torch.float16": the global a _rebuild_tensor_v3 call names
  std::string_view storage;  // "torch.HalfStorage": its legacy storage class; empty if none
  int64_t size = 0;          // bytes per element
  c10::ScalarType type = c10::ScalarType::Undefined;
};
// By dtype name ("torch.uint16"), or null.
const DtypeInfo* dtypeByName(std::string_view name);
// By c10 type (kFloat: "torch.float32", "torch.FloatStorage"), or null for Undefined and the
// types the table does not hold.
const DtypeInfo* dtypeByType(c10::ScalarType type);
// By storage class ("torch.HalfStorage"; the untyped "torch.storage.UntypedStorage" holds
// bytes, torch.uint8), or null.
const DtypeInfo* dtypeByStorage(std::string_view storage_type);

// The element type of a storage class ("torch.HalfStorage"), or Undefined.
c10::ScalarType storageDtype(std::string_view storage_type);

// Frees a value graph without recursion (hostile pickles nest millions deep or form cycles).
void releaseIteratively(std::vector<PickleRef> roots);

struct UnpickleResult {
  PickleRef root;
  // Every tensor the pickle rebuilds (also those it builds and drops).
  std::vector<std::shared_ptr<const TensorRecord>> tensors;

  UnpickleResult() = default;
  UnpickleResult(UnpickleResult&&) = default;
  UnpickleResult& operator=(UnpickleResult&&) = default;
  ~UnpickleResult() { releaseIteratively({std::move(root)}); }
};

// Limits against hostile input: pickles bigger than this, or building more values, are
// refused (a state_dict of 10,000 tensors builds about 200,000).
constexpr size_t kMaxPickleBytes = size_t{1} << 30;
constexpr size_t kMaxPickleValues = 20'000'000;

// Parses `data` (the bytes of data.pkl). `source` names it in messages.
UnpickleResult unpickle(std::string_view data, const std::string& source);

// A dict reachable from the root through string keys (and list/tuple indices), with the
// tensors among its entries: a candidate state_dict. A key set twice keeps its last value,
// as Python does. Dicts deeper than 32 levels, or under keys longer than 256 bytes, are not
// searched.
struct DictNode {
  std::string path;  // "model", "state_dict", "" for the root; list items as "[3]"; "/"-joined
  std::vector<std::pair<std::string, const TensorRecord*>> tensors;  // key -> tensor
};
std::vector<DictNode> tensorDicts(const UnpickleResult& result);

}  // namespace bnadapt::torchfile
