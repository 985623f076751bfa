#include "torchfile/pickle_walker.h"

#include <cstdint>
#include <cstring>
#include <deque>
#include <unordered_map>
#include <unordered_set>

#include "common/error.h"

namespace bnadapt::torchfile {
namespace {

using Kind = PickleValue::Kind;


bool isGlobal(const PickleRef& v, std::string_view name) {
  return v && v->kind == Kind::kGlobal && v->text == name;
}

bool asInt(const PickleRef& v, int64_t& out) {
  if (!v || v->kind != Kind::kInt || v->big_int) return false;
  out = v->int_value;
  return true;
}

bool asIntTuple(const PickleRef& v, std::vector<int64_t>& out) {
  if (!v || v->kind != Kind::kTuple) return false;
  out.clear();
  for (const auto& item : v->items) {
    int64_t x = 0;
    if (!asInt(item, x)) return false;
    out.push_back(x);
  }
  return true;
}

// Moves the edges of `v` out (into `out`): what v held no longer keeps anything alive.
void takeEdges(PickleValue& v, std::vector<PickleRef>& out) {
  for (auto& item : v.items) out.push_back(std::move(item));
  for (auto& [k, value] : v.entries) {
    out.push_back(std::move(k));
    out.push_back(std::move(value));
  }
  for (auto& s : v.states) out.push_back(std::move(s));
  v.items.clear();
  v.entries.clear();
  v.states.clear();
}

class Unpickler {
 public:
  Unpickler(std::string_view data, const std::string& source) : data_(data), source_(source) {}
  ~Unpickler() {
    if (!finished_) cutUnreachable(nullptr);  // an error: everything built is garbage
  }

  UnpickleResult run() {
    check(data_.size() <= kMaxPickleBytes, "data.pkl is ", data_.size(), " bytes, more than the ",
          kMaxPickleBytes, " accepted");
    for (;;) {
      op_pos_ = pos_;
      const uint8_t op = u8();
      if (op == '.') break;  // STOP
      step(op);
    }
    check(stack_.size() == 1 && marks_.empty(), "STOP with ", stack_.size(),
          " values on the stack (expected 1)");
    result_.root = stack_.back();
    stack_.clear();  // the root owns everything now
    memo_.clear();
    cutUnreachable(result_.root.get());
    finished_ = true;
    return std::move(result_);
  }

 private:
  template <typename... Args>
  [[noreturn]] void error(Args&&... args) {
    fail(ExitCode::kCheckpoint, source_, ": byte ", op_pos_, ": ", std::forward<Args>(args)...);
  }
  template <typename... Args>
  void check(bool ok, Args&&... args) {
    if (!ok) error(std::forward<Args>(args)...);
  }

  PickleRef make(Kind kind) {
    check(++values_ <= kMaxPickleValues, "more than ", kMaxPickleValues, " values");
    // Not make_shared: all_'s weak reference would keep a dropped value's memory.
    PickleRef v(new PickleValue);
    v->kind = kind;
    all_.push_back(v);
    return v;
  }

  // Cuts the edges of every value still alive that `keep` (nullptr: nothing) does not reach.
  // A dropped value that is part of a cycle (a list appended to itself, then popped) is kept
  // alive by the cycle alone and would leak; the values `keep` reaches are left intact.
  void cutUnreachable(const PickleValue* keep) {
    std::unordered_set<const PickleValue*> reachable;
    std::vector<const PickleValue*> todo;
    if (keep != nullptr) todo.push_back(keep);
    while (!todo.empty()) {
      const PickleValue* v = todo.back();
      todo.pop_back();
      if (v == nullptr || !reachable.insert(v).second) continue;
      for (const auto& item : v->items) todo.push_back(item.get());
      for (const auto& [k, value] : v->entries) {
        todo.push_back(k.get());
        todo.push_back(value.get());
      }
      for (const auto& s : v->states) todo.push_back(s.get());
    }
    std::vector<PickleRef> edges;
    for (const auto& weak : all_) {
      const PickleRef v = weak.lock();
      if (v == nullptr || reachable.count(v.get()) > 0) continue;
      takeEdges(*v, edges);
      edges.clear();  // frees what only this edge kept, without recursion (~PickleValue)
    }
    all_.clear();
  }

  // ---- reading -----------------------------------------------------------------------
  void need(uint64_t n) {
    check(n <= data_.size() - pos_, "truncated: needs ", n, " more byte(s), ",
          data_.size() - pos_, " left");
  }
  uint8_t u8() {
    need(1);
    return static_cast<uint8_t>(data_[pos_++]);
  }
  uint64_t le(int bytes) {
    need(bytes);
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= uint64_t(uint8_t(data_[pos_ + i])) << (8 * i);
    pos_ += bytes;
    return v;
  }
  std::string bytes(uint64_t n) {
    need(n);
    std::string s(data_.substr(pos_, n));
    pos_ += n;
    return s;
  }
  std::string line() {
    const size_t nl = data_.find('\n', pos_);
    check(nl != std::string_view::npos, "truncated: unterminated text argument");
    std::string s(data_.substr(pos_, nl - pos_));
    pos_ = nl + 1;
    return s;
  }

  // ---- the stack ---------------------------------------------------------------------
  void push(PickleRef v) { stack_.push_back(std::move(v)); }
  PickleRef pop() {
    check(stack_.size() > (marks_.empty() ? 0 : marks_.back()), "stack underflow");
    PickleRef v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  PickleRef& top() {
    check(stack_.size() > (marks_.empty() ? 0 : marks_.back()), "stack underflow");
    return stack_.back();
  }
  std::vector<PickleRef> popMark() {
    check(!marks_.empty(), "no MARK on the stack");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PickleRef> items(std::make_move_iterator(stack_.begin() + m),
                                 std::make_move_iterator(stack_.end()));
    stack_.resize(m);
    return items;
  }
  void memoPut(uint64_t index) { memo_[index] = top(); }
  void memoGet(uint64_t index) {
    auto it = memo_.find(index);
    check(it != memo_.end(), "memo entry ", index, " was never stored");
    push(it->second);
  }

  PickleRef intValue(int64_t v) {
    auto p = make(Kind::kInt);
    p->int_value = v;
    return p;
  }
  PickleRef longValue(const std::string& le_bytes) {
    auto p = make(Kind::kInt);
    if (le_bytes.size() > 8) {
      p->big_int = true;
      return p;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < le_bytes.size(); ++i) v |= uint64_t(uint8_t(le_bytes[i])) << (8 * i);
    if (!le_bytes.empty() && le_bytes.size() < 8 && (uint8_t(le_bytes.back()) & 0x80)) {
      v |= ~uint64_t(0) << (8 * le_bytes.size());  // sign-extend
    }
    p->int_value = static_cast<int64_t>(v);
    return p;
  }
  PickleRef textInt(std::string s) {
    if (!s.empty() && s.back() == 'L') s.pop_back();
    if (s == "00" || s == "01") {
      auto b = make(Kind::kBool);
      b->int_value = s == "01";
      return b;
    }
    auto p = make(Kind::kInt);
    try {
      size_t used = 0;
      p->int_value = std::stoll(s, &used);
      check(used == s.size(), "bad integer '", s, "'");
    } catch (const std::out_of_range&) {
      p->big_int = true;
    } catch (const std::invalid_argument&) {
      error("bad integer '", s, "'");
    }
    return p;
  }
  PickleRef str(Kind kind, std::string s) {
    auto p = make(kind);
    p->text = std::move(s);
    return p;
  }
  PickleRef seq(Kind kind, std::vector<PickleRef> items) {
    auto p = make(kind);
    p->items = std::move(items);
    return p;
  }
  PickleRef global(const std::string& module, const std::string& name) {
    return str(Kind::kGlobal, module + "." + name);
  }

  void setItems(PickleRef& target, std::vector<PickleRef>& kv) {
    check(kv.size() % 2 == 0, "SETITEMS with an odd number of values");
    check(target->kind != Kind::kTuple && target->kind != Kind::kString &&
              target->kind != Kind::kInt && target->kind != Kind::kNone,
          "SETITEM on a value that is not a mapping");
    for (size_t i = 0; i < kv.size(); i += 2) target->entries.emplace_back(kv[i], kv[i + 1]);
  }

  void call(PickleRef callable, PickleRef args) {
    check(args->kind == Kind::kTuple, "REDUCE/NEWOBJ arguments are not a tuple");
    auto c = make(Kind::kCall);
    c->items = {callable, args};
    recordTensor(*c);
    push(std::move(c));
  }

  // Marks the calls that rebuild a tensor. A Parameter is its data's tensor; a tensor with
  // Python attributes (or of a subclass) is _rebuild_from_type_v2(func, type, args, state).
  void recordTensor(PickleValue& c) {
    const PickleRef& fn = c.items[0];
    const auto& args = c.items[1]->items;
    if (isGlobal(fn, "torch._utils._rebuild_parameter") ||
        isGlobal(fn, "torch._utils._rebuild_parameter_with_state")) {
      if (!args.empty()) c.tensor = args[0]->tensor;
      return;
    }
    if (isGlobal(fn, "torch._tensor._rebuild_from_type_v2")) {
      if (args.size() >= 3 && args[2]->kind == Kind::kTuple) {
        c.tensor = rebuildTensor(args[0], args[2]->items);
      }
      return;
    }
    c.tensor = rebuildTensor(fn, args);
  }

  // torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...) (and the older
  // _rebuild_tensor), or _rebuild_tensor_v3(storage, offset, size, stride, requires_grad,
  // hooks, dtype[, metadata]); storage a persistent ('storage', <storage class>, key,
  // location, numel), numel counting elements of the storage class (bytes for
  // torch.storage.UntypedStorage, which v3 uses). Null if `fn` rebuilds no tensor.
  std::shared_ptr<const TensorRecord> rebuildTensor(const PickleRef& fn,
                                                    const std::vector<PickleRef>& args) {
    const bool v3 = isGlobal(fn, "torch._utils._rebuild_tensor_v3");
    if (!v3 && !isGlobal(fn, "torch._utils._rebuild_tensor_v2") &&
        !isGlobal(fn, "torch._utils._rebuild_tensor")) {
      return nullptr;
    }
    check(args.size() >= (v3 ? 7u : 4u) && args[0]->kind == Kind::kPersistent, "malformed ",
          fn->text, " call: expected (storage, offset, size, stride, ",
          v3 ? "requires_grad, hooks, dtype, ...)" : "...)");
    const PickleRef& pid = args[0]->items.at(0);
    check(pid->kind == Kind::kTuple && pid->items.size() >= 5 &&
              pid->items[0]->kind == Kind::kString && pid->items[0]->text == "storage" &&
              pid->items[1]->kind == Kind::kGlobal && pid->items[2]->kind == Kind::kString,
          "malformed storage reference in ", fn->text);
    TensorRecord rec;
    rec.storage_type = pid->items[1]->text;
    rec.storage_key = pid->items[2]->text;
    int64_t stored = 0;  // in elements of the storage class
    check(asInt(pid->items[4], stored) && stored >= 0, "malformed storage size in ", fn->text);
    const DtypeInfo* storage = dtypeByStorage(rec.storage_type);
    const DtypeInfo* dtype = storage;
    if (v3) {
      check(args[6]->kind == Kind::kGlobal, "malformed ", fn->text,
            " call: its 7th argument is not a dtype");
      rec.type_name = args[6]->text;
      dtype = dtypeByName(rec.type_name);
    } else {
      rec.type_name = storage ? std::string(storage->name) : rec.storage_type;
    }
    rec.dtype = dtype ? dtype->type : c10::ScalarType::Undefined;
    if (!v3 || (storage != nullptr && storage == dtype)) {
      rec.storage_numel = stored;
    } else if (storage == nullptr || dtype == nullptr) {
      rec.storage_numel = -1;  // the size of an element, or of the storage, is unknown
    } else {
      check(stored <= INT64_MAX / storage->size, "malformed storage size in ", fn->text);
      rec.storage_numel = stored * storage->size / dtype->size;
    }
    check(asInt(args[1], rec.offset) && asIntTuple(args[2], rec.sizes) &&
              asIntTuple(args[3], rec.strides) && rec.sizes.size() == rec.strides.size() &&
              rec.offset >= 0,
          "malformed offset/size/stride in ", fn->text);
    for (size_t i = 0; i < rec.sizes.size(); ++i) {
      check(rec.sizes[i] >= 0 && rec.strides[i] >= 0, "negative size or stride in ", fn->text);
    }
    auto shared = std::make_shared<const TensorRecord>(std::move(rec));
    result_.tensors.push_back(shared);
    return shared;
  }

  void step(uint8_t op) {
    switch (op) {
      case 0x80: {  // PROTO
        const uint8_t proto = u8();
        check(proto <= 5, "unsupported pickle protocol ", int(proto));
        break;
      }
      case 0x95: le(8); break;  // FRAME: a hint only
      case '(': marks_.push_back(stack_.size()); break;
      case '0': pop(); break;
      case '1': popMark(); break;
      case '2': push(top()); break;
      case 'N': push(make(Kind::kNone)); break;
      case 0x88:
      case 0x89: {
        auto b = make(Kind::kBool);
        b->int_value = op == 0x88;
        push(b);
        break;
      }
      case 'I': push(textInt(line())); break;
      case 'L': push(textInt(line())); break;
      case 'J': push(intValue(static_cast<int32_t>(le(4)))); break;
      case 'K': push(intValue(u8())); break;
      case 'M': push(intValue(static_cast<int64_t>(le(2)))); break;
      case 0x8a: push(longValue(bytes(u8()))); break;
      case 0x8b: {
        const uint64_t n = le(4);
        push(longValue(bytes(n)));
        break;
      }
      case 'F': {
        auto f = make(Kind::kFloat);
        try {
          f->float_value = std::stod(line());
        } catch (const std::exception&) {
          error("bad float");
        }
        push(f);
        break;
      }
      case 'G': {
        need(8);
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | uint8_t(data_[pos_ + i]);
        pos_ += 8;
        auto f = make(Kind::kFloat);
        std::memcpy(&f->float_value, &bits, 8);
        push(f);
        break;
      }
      case 'S': push(str(Kind::kString, line())); break;  // repr-quoted; kept verbatim
      case 'V': push(str(Kind::kString, line())); break;
      case 'T': push(str(Kind::kString, bytes(le(4)))); break;
      case 'U': push(str(Kind::kString, bytes(u8()))); break;
      case 'X': push(str(Kind::kString, bytes(le(4)))); break;
      case 0x8c: push(str(Kind::kString, bytes(u8()))); break;
      case 0x8d: push(str(Kind::kString, bytes(le(8)))); break;
      case 'B': push(str(Kind::kBytes, bytes(le(4)))); break;
      case 'C': push(str(Kind::kBytes, bytes(u8()))); break;
      case 0x8e:
      case 0x96: push(str(Kind::kBytes, bytes(le(8)))); break;
      case 0x97: error("out-of-band buffers (NEXT_BUFFER) are not supported"); break;
      case 0x98: break;  // READONLY_BUFFER
      case ')': push(seq(Kind::kTuple, {})); break;
      case 't': push(seq(Kind::kTuple, popMark())); break;
      case 0x85:
      case 0x86:
      case 0x87: {
        const size_t n = op - 0x84;
        std::vector<PickleRef> items(n);
        for (size_t i = n; i-- > 0;) items[i] = pop();
        push(seq(Kind::kTuple, std::move(items)));
        break;
      }
      case ']': push(seq(Kind::kList, {})); break;
      case 'l': push(seq(Kind::kList, popMark())); break;
      case '}': push(make(Kind::kDict)); break;
      case 'd': {
        auto items = popMark();
        auto d = make(Kind::kDict);
        setItems(d, items);
        push(d);
        break;
      }
      case 0x8f: push(make(Kind::kSet)); break;
      case 0x91: push(seq(Kind::kSet, popMark())); break;
      case 'a': {
        auto v = pop();
        auto& list = top();
        check(list->kind == Kind::kList, "APPEND to a value that is not a list");
        list->items.push_back(std::move(v));
        break;
      }
      case 'e': {
        auto items = popMark();
        auto& list = top();
        check(list->kind == Kind::kList, "APPENDS to a value that is not a list");
        for (auto& v : items) list->items.push_back(std::move(v));
        break;
      }
      case 0x90: {
        auto items = popMark();
        auto& set = top();
        check(set->kind == Kind::kSet, "ADDITEMS to a value that is not a set");
        for (auto& v : items) set->items.push_back(std::move(v));
        break;
      }
      case 's': {
        std::vector<PickleRef> kv(2);
        kv[1] = pop();
        kv[0] = pop();
        setItems(top(), kv);
        break;
      }
      case 'u': {
        auto kv = popMark();
        setItems(top(), kv);
        break;
      }
      case 'c': {
        std::string module = line();
        std::string name = line();
        push(global(module, name));
        break;
      }
      case 0x93: {
        auto name = pop();
        auto module = pop();
        check(module->kind == Kind::kString && name->kind == Kind::kString,
              "STACK_GLOBAL needs two strings");
        push(global(module->text, name->text));
        break;
      }
      case 'R': {
        auto args = pop();
        auto fn = pop();
        call(std::move(fn), std::move(args));
        break;
      }
      case 0x81: {
        auto args = pop();
        auto cls = pop();
        call(std::move(cls), std::move(args));
        break;
      }
      case 0x92: {
        auto kwargs = pop();
        auto args = pop();
        auto cls = pop();
        call(std::move(cls), std::move(args));
        break;
      }
      case 'i': {
        std::string module = line();
        std::string name = line();
        call(global(module, name), seq(Kind::kTuple, popMark()));
        break;
      }
      case 'o': {
        auto items = popMark();
        check(!items.empty(), "OBJ without a class");
        PickleRef cls = items.front();
        items.erase(items.begin());
        call(std::move(cls), seq(Kind::kTuple, std::move(items)));
        break;
      }
      case 'b': {
        auto state = pop();
        top()->states.push_back(std::move(state));
        break;
      }
      case 'P': {
        auto p = make(Kind::kPersistent);
        p->items = {str(Kind::kString, line())};
        push(p);
        break;
      }
      case 'Q': {
        auto p = make(Kind::kPersistent);
        p->items = {pop()};
        push(p);
        break;
      }
      case 'p': {
        const std::string s = line();
        try {
          memoPut(std::stoull(s));
        } catch (const std::logic_error&) {
          error("bad memo index '", s, "'");
        }
        break;
      }
      case 'q': memoPut(u8()); break;
      case 'r': memoPut(le(4)); break;
      case 0x94: memoPut(memo_.size()); break;
      case 'g': {
        const std::string s = line();
        uint64_t index = 0;
        try {
          index = std::stoull(s);
        } catch (const std::logic_error&) {
          error("bad memo index '", s, "'");
        }
        memoGet(index);
        break;
      }
      case 'h': memoGet(u8()); break;
      case 'j': memoGet(le(4)); break;
      case 0x82:
      case 0x83:
      case 0x84: error("extension registry codes (EXT1/2/4) are not supported"); break;
      default: error("unknown pickle opcode 0x", std::hex, int(op));
    }
  }

  std::string_view data_;
  const std::string& source_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  std::vector<PickleRef> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PickleRef> memo_;
  size_t values_ = 0;
  std::vector<std::weak_ptr<PickleValue>> all_;  // every value made, for cutUnreachable()
  bool finished_ = false;  // run() returned the result
  UnpickleResult result_;
};

}  // namespace

namespace {

// Every dtype torch 2.15 has. The tool patches and reads only those with a c10 type here;
// the rest are copied byte for byte (LibTorch 1.13 lacks uint16 and float8 anyway).
constexpr DtypeInfo kDtypes[] = {
    {"torch.float32", "torch.FloatStorage", 4, c10::kFloat},
    {"torch.float64", "torch.DoubleStorage", 8, c10::kDouble},
    {"torch.float16", "torch.HalfStorage", 2, c10::kHalf},
    {"torch.bfloat16", "torch.BFloat16Storage", 2, c10::kBFloat16},
    {"torch.int64", "torch.LongStorage", 8, c10::kLong},
    {"torch.int32", "torch.IntStorage", 4, c10::kInt},
    {"torch.int16", "torch.ShortStorage", 2, c10::kShort},
    {"torch.int8", "torch.CharStorage", 1, c10::kChar},
    {"torch.uint8", "torch.ByteStorage", 1, c10::kByte},
    {"torch.bool", "torch.BoolStorage", 1, c10::kBool},
    {"torch.complex64", "torch.ComplexFloatStorage", 8},
    {"torch.complex128", "torch.ComplexDoubleStorage", 16},
    {"torch.qint8", "torch.QInt8Storage", 1},
    {"torch.quint8", "torch.QUInt8Storage", 1},
    {"torch.qint32", "torch.QInt32Storage", 4},
    {"torch.quint4x2", "torch.QUInt4x2Storage", 1},
    {"torch.quint2x4", "torch.QUInt2x4Storage", 1},
    {"torch.complex32", "", 4},
    {"torch.uint16", "", 2},
    {"torch.uint32", "", 4},
    {"torch.uint64", "", 8},
    {"torch.float8_e4m3fn", "", 1},
    {"torch.float8_e4m3fnuz", "", 1},
    {"torch.float8_e5m2", "", 1},
    {"torch.float8_e5m2fnuz", "", 1},
    {"torch.float8_e8m0fnu", "", 1},
    {"torch.float4_e2m1fn_x2", "", 1},
    {"torch.bits1x8", "", 1},
    {"torch.bits2x4", "", 1},
    {"torch.bits4x2", "", 1},
    {"torch.bits8", "", 1},
    {"torch.bits16", "", 2},
    {"torch.uint1", "", 1}, {"torch.uint2", "", 1}, {"torch.uint3", "", 1},
    {"torch.uint4", "", 1}, {"torch.uint5", "", 1}, {"torch.uint6", "", 1},
    {"torch.uint7", "", 1},
    {"torch.int1", "", 1},  {"torch.int2", "", 1},  {"torch.int3", "", 1},
    {"torch.int4", "", 1},  {"torch.int5", "", 1},  {"torch.int6", "", 1},
    {"torch.int7", "", 1},
};

}  // namespace

const DtypeInfo* dtypeByName(std::string_view name) {
  for (const DtypeInfo& d : kDtypes) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

const DtypeInfo* dtypeByType(c10::ScalarType type) {
  if (type == c10::ScalarType::Undefined) return nullptr;
  for (const DtypeInfo& d : kDtypes) {
    if (d.type == type) return &d;
  }
  return nullptr;
}

const DtypeInfo* dtypeByStorage(std::string_view storage_type) {
  // torch.save names the class by its module; a hand-written pickle may use the alias.
  if (storage_type == "torch.storage.UntypedStorage" || storage_type == "torch.UntypedStorage") {
    return dtypeByName("torch.uint8");
  }
  for (const DtypeInfo& d : kDtypes) {
    if (!d.storage.empty() && d.storage == storage_type) return &d;
  }
  return nullptr;
}

c10::ScalarType storageDtype(std::string_view storage_type) {
  const DtypeInfo* d = dtypeByStorage(storage_type);
  return d ? d->type : c10::ScalarType::Undefined;
}

PickleValue::~PickleValue() {
  // The outermost destructor on this thread collects the children of every value freed while
  // it runs and frees them in a loop; the stack depth stays constant whatever the nesting.
  thread_local std::vector<PickleRef>* pending = nullptr;
  std::vector<PickleRef> mine;
  const bool outermost = pending == nullptr;
  if (outermost) pending = &mine;
  try {
    takeEdges(*this, *pending);
  } catch (const std::bad_alloc&) {
    // Out of memory: what is left goes the recursive way, with the members.
  }
  if (!outermost) return;
  while (!mine.empty()) {
    PickleRef v = std::move(mine.back());
    mine.pop_back();
    v.reset();  // may free more values, whose children land in `mine`
  }
  pending = nullptr;
}

UnpickleResult unpickle(std::string_view data, const std::string& source) {
  return Unpickler(data, source).run();
}

namespace {

void releaseNodes(std::vector<PickleRef> roots) {
  std::vector<PickleRef> all;
  std::unordered_set<const PickleValue*> seen;
  while (!roots.empty()) {
    PickleRef v = std::move(roots.back());
    roots.pop_back();
    if (!v || !seen.insert(v.get()).second) continue;
    for (auto& item : v->items) roots.push_back(item);
    for (auto& [k, value] : v->entries) {
      roots.push_back(k);
      roots.push_back(value);
    }
    for (auto& s : v->states) roots.push_back(s);
    all.push_back(std::move(v));
  }
  for (auto& v : all) {  // cut every edge first: no node then owns a deep subtree or a cycle
    v->items.clear();
    v->entries.clear();
    v->states.clear();
  }
}

}  // namespace

void releaseIteratively(std::vector<PickleRef> roots) {
  try {
    releaseNodes(std::move(roots));
  } catch (const std::bad_alloc&) {
    // Out of memory while freeing: leaking beats std::terminate from a destructor.
  }
}

std::vector<DictNode> tensorDicts(const UnpickleResult& result) {
  constexpr size_t kMaxDepth = 32;
  constexpr size_t kMaxKey = 256;
  struct Item {
    const PickleValue* value;
    std::string path;
    size_t depth;
  };
  std::vector<DictNode> out;
  std::unordered_set<const PickleValue*> seen;
  std::deque<Item> queue{{result.root.get(), "", 0}};
  auto child = [](const std::string& parent, const std::string& key) {
    return parent.empty() ? key : parent + "/" + key;
  };
  while (!queue.empty()) {
    Item item = std::move(queue.front());
    queue.pop_front();
    const PickleValue* v = item.value;
    if (v == nullptr || item.depth > kMaxDepth || !seen.insert(v).second) continue;
    if (!v->entries.empty() || v->kind == PickleValue::Kind::kDict) {
      // Python keeps the last value of a key set twice.
      std::unordered_map<std::string, const PickleValue*> last;
      std::vector<std::string> order;
      for (const auto& [k, value] : v->entries) {
        if (!k || k->kind != PickleValue::Kind::kString) continue;
        if (last.emplace(k->text, value.get()).second) {
          order.push_back(k->text);
        } else {
          last[k->text] = value.get();
        }
      }
      DictNode node;
      node.path = item.path;
      for (const std::string& key : order) {
        const PickleValue* value = last[key];
        if (value->tensor) {
          node.tensors.emplace_back(key, value->tensor.get());
        } else if (key.size() <= kMaxKey) {
          queue.push_back({value, child(item.path, key), item.depth + 1});
        }
      }
      if (!node.tensors.empty()) out.push_back(std::move(node));
    }
    // LibTorch's pickler (torch::pickle_save) wraps typed containers in restore_type_tag.
    if (v->kind == PickleValue::Kind::kCall && v->items.size() == 2 &&
        isGlobal(v->items[0], "torch.jit._pickle.restore_type_tag") &&
        !v->items[1]->items.empty()) {
      queue.push_front({v->items[1]->items[0].get(), item.path, item.depth});
    }
    if (v->kind == PickleValue::Kind::kList || v->kind == PickleValue::Kind::kTuple) {
      for (size_t i = 0; i < v->items.size(); ++i) {
        queue.push_back({v->items[i].get(), child(item.path, "[" + std::to_string(i) + "]"),
                         item.depth + 1});
      }
    }
  }
  return out;
}

}  // namespace bnadapt::torchfile
