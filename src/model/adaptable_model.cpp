#include "model/adaptable_model.h"

#include <algorithm>
#include <iomanip>
#include <fstream>
#include <mutex>
#include <optional>
#include <regex>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/library.h>

#include "common/error.h"
#include "common/hash.h"
#include "model/torch_errors.h"

namespace bnadapt::model {
namespace {

// ---- the observe operator ---------------------------------------------------------------
// bnadapt::observe(x, key) -> x, inserted before every rewritten batch normalisation. `key`
// is the running-mean tensor the node normalises with: it names the layer (and tells apart
// the instances of a shared scripted type) and, through a process-wide registry, the model
// whose calibrate() is running. Each model registers its own keys for the duration of its
// calibrate(), so several models calibrate at once (two ranks as threads of one process);
// a key nobody registered (a model that is not calibrating) makes observe a no-op.

struct ObserveContext {
  stats::StatsAccumulator* acc = nullptr;
  const std::vector<BnLayer>* layers = nullptr;
  std::mutex mu;        // torch.jit.fork runs branches of one forward on the inter-op pool
  std::string failure;  // the first layer that rejected its input; guarded by mu
};

struct Registration {
  ObserveContext* ctx = nullptr;
  size_t layer = 0;
};

std::mutex g_registry_mu;
std::unordered_map<const c10::TensorImpl*, Registration>& registry() {  // guarded by g_registry_mu
  static auto* r = new std::unordered_map<const c10::TensorImpl*, Registration>();
  return *r;
}

// The registration of `key`, or nullopt (untracked, or a model that is not calibrating).
std::optional<Registration> registered(const c10::optional<at::Tensor>& key) {
  if (!key.has_value() || !key->defined()) return std::nullopt;
  std::lock_guard<std::mutex> lock(g_registry_mu);
  auto it = registry().find(key->unsafeGetTensorImpl());
  if (it == registry().end()) return std::nullopt;
  return it->second;
}

stats::BatchMoments observeRegistered(const Registration& reg, const at::Tensor& x,
                                      c10::optional<at::ScalarType> dtype) {
  std::lock_guard<std::mutex> lock(reg.ctx->mu);
  try {
    return reg.ctx->acc->observe(reg.layer, x, dtype);
  } catch (const std::exception& e) {
    if (reg.ctx->failure.empty()) {
      reg.ctx->failure = "layer '" + (*reg.ctx->layers)[reg.layer].name + "': " + e.what();
    }
    throw;
  }
}

at::Tensor observeOp(const at::Tensor& x, const c10::optional<at::Tensor>& key) {
  if (const auto reg = registered(key)) observeRegistered(*reg, x, c10::nullopt);
  return x;
}

// bnadapt::batch_moments(x, running_mean, running_var) -> (mean, var): the batch's
// per-channel mean and biased variance, in the running buffers' dtype, observed on the way.
// Inserted in front of aten::batch_norm, which then normalises with them in eval mode: the
// statistics are computed once, by the observation's fused float64 pass, instead of once
// there and once more inside training-mode batch norm. Outside calibration: at::var_mean.
std::tuple<at::Tensor, at::Tensor> batchMomentsOp(const at::Tensor& x,
                                                   const c10::optional<at::Tensor>& running_mean,
                                                   const c10::optional<at::Tensor>& running_var) {
  (void)running_var;  // names the variance buffer for discovery (attrPath); not read
  const auto dtype = running_mean.has_value() && running_mean->defined()
                         ? c10::optional<at::ScalarType>(running_mean->scalar_type())
                         : c10::nullopt;
  if (const auto reg = registered(running_mean)) {
    stats::BatchMoments m = observeRegistered(*reg, x, dtype);
    return {m.mean, m.var};
  }
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < x.dim(); ++i) {
    if (i != 1) dims.push_back(i);
  }
  auto [var, mean] = at::var_mean(x, dims, /*unbiased=*/false, /*keepdim=*/false);
  const at::ScalarType type = dtype.value_or(x.scalar_type());
  return {mean.to(type), var.to(type)};
}

TORCH_LIBRARY(bnadapt, m) {
  m.def(torch::schema("bnadapt::observe(Tensor x, Tensor? key) -> Tensor",
                      c10::AliasAnalysisKind::CONSERVATIVE),
        &observeOp);
  m.def(torch::schema("bnadapt::batch_moments(Tensor x, Tensor? running_mean, "
                      "Tensor? running_var) -> (Tensor, Tensor)",
                      c10::AliasAnalysisKind::CONSERVATIVE),
        &batchMomentsOp);
}

// Registers one model's keys to `ctx` while it lives.
class ContextScope {
 public:
  ContextScope(ObserveContext* ctx, const std::unordered_map<const c10::TensorImpl*, size_t>& keys)
      : keys_(keys) {
    std::lock_guard<std::mutex> lock(g_registry_mu);
    for (const auto& item : keys_) {
      BNA_ASSERT(registry().count(item.first) == 0, "a BatchNorm key is registered twice: the "
                 "same model calibrating from two threads at once");
    }
    for (const auto& [key, layer] : keys_) registry().emplace(key, Registration{ctx, layer});
  }
  ~ContextScope() {
    std::lock_guard<std::mutex> lock(g_registry_mu);
    for (const auto& item : keys_) registry().erase(item.first);
  }
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;

 private:
  const std::unordered_map<const c10::TensorImpl*, size_t>& keys_;
};

// ---- graph helpers -----------------------------------------------------------------------

// The batch normalisation ops that take running statistics, and where their inputs are.
struct BnOp {
  const char* name;
  size_t inputs;  // tells overloads apart (_native_batch_norm_legit.no_stats has 6)
  int mean, var, training, momentum, eps;  // input indices; training -1: none
};
constexpr BnOp kBnOps[] = {
    {"aten::batch_norm", 9, 3, 4, 5, 6, 7},
    {"aten::native_batch_norm", 8, 3, 4, 5, 6, 7},
    {"aten::_native_batch_norm_legit", 8, 3, 4, 5, 6, 7},
    {"aten::_native_batch_norm_legit_no_training", 7, 3, 4, -1, 5, 6},
    {"aten::_batch_norm_impl_index", 9, 3, 4, 5, 6, 7},
};

const BnOp* bnOp(const torch::jit::Node* node) {
  for (const BnOp& op : kBnOps) {
    if (node->kind() == c10::Symbol::fromQualString(op.name) && node->inputs().size() == op.inputs) {
      return &op;
    }
  }
  return nullptr;
}

void collectBn(torch::jit::Block* block, std::vector<torch::jit::Node*>& out) {
  for (torch::jit::Node* node : block->nodes()) {
    if (bnOp(node) != nullptr) out.push_back(node);
    for (torch::jit::Block* sub : node->blocks()) collectBn(sub, out);
  }
}

// Every normalisation op: batch normalisation and layer, group and instance norm.
void collectNorms(torch::jit::Block* block, std::vector<torch::jit::Node*>& out) {
  for (torch::jit::Node* node : block->nodes()) {
    const std::string kind = node->kind().toQualString();
    if (bnOp(node) != nullptr || kind == "aten::layer_norm" || kind == "aten::group_norm" ||
        kind == "aten::instance_norm") {
      out.push_back(node);
    }
    for (torch::jit::Block* sub : node->blocks()) collectNorms(sub, out);
  }
}

std::vector<std::shared_ptr<torch::jit::Graph>> methodGraphs(const torch::jit::Module& m) {
  std::vector<std::shared_ptr<torch::jit::Graph>> out;
  for (const auto& method : m.get_methods()) {
    out.push_back(torch::jit::toGraphFunction(method.function()).graph());
  }
  return out;
}

// The attribute path from the graph's `self` to `v` ({"bn", "running_mean"}) when v is
// statically a module attribute (through optional unwraps and if-branches); else nullopt.
std::optional<std::vector<std::string>> attrPath(torch::jit::Value* v, torch::jit::Value* self,
                                                 int depth = 0) {
  if (v == self) return std::vector<std::string>{};
  if (depth > 64) return std::nullopt;
  torch::jit::Node* n = v->node();
  const std::string kind = n->kind().toQualString();
  if (kind == "prim::GetAttr") {
    auto base = attrPath(n->input(0), self, depth + 1);
    if (base) base->push_back(n->s(c10::attr::name));
    return base;
  }
  if (kind == "bnadapt::batch_moments") {  // output 0 stands for input 1, output 1 for input 2
    return attrPath(n->input(1 + v->offset()), self, depth + 1);
  }
  if (kind == "prim::unchecked_cast" || kind == "aten::_unwrap_optional" ||
      kind == "prim::unchecked_unwrap_optional") {
    return attrPath(n->input(0), self, depth + 1);
  }
  if (kind == "prim::If") {
    for (torch::jit::Block* b : n->blocks()) {
      if (auto p = attrPath(b->outputs()[v->offset()], self, depth + 1)) return p;
    }
  }
  return std::nullopt;
}

bool isNoneConstant(torch::jit::Value* v) {
  return v->node()->kind() == c10::prim::Constant && v->type()->kind() == c10::TypeKind::NoneType;
}

// Normalise with batch statistics and hand the input to observe first. momentum = 0 keeps
// the calibration copy's running buffers (which other modules may read) unchanged.
// aten::batch_norm (what nn.BatchNorm*d and F.batch_norm script and trace to) instead takes
// the batch's moments from bnadapt::batch_moments and runs in eval mode: one statistics pass.
void observeNode(torch::jit::Graph& graph, torch::jit::Node* bn, const BnOp& op) {
  torch::jit::WithInsertPoint guard(bn);
  if (bn->kind() == c10::Symbol::fromQualString("aten::batch_norm")) {
    torch::jit::Node* moments = graph.insertNode(graph.create(
        c10::Symbol::fromQualString("bnadapt::batch_moments"),
        {bn->input(0), bn->input(op.mean), bn->input(op.var)}, 2));
    for (size_t i = 0; i < 2; ++i) moments->output(i)->setType(c10::TensorType::get());
    bn->replaceInput(op.mean, moments->output(0));
    bn->replaceInput(op.var, moments->output(1));
    bn->replaceInput(op.training, graph.insertConstant(false));
    return;
  }
  const c10::Symbol observe = c10::Symbol::fromQualString("bnadapt::observe");
  torch::jit::Value* seen = graph.insert(observe, {bn->input(0), bn->input(op.mean)});
  bn->replaceInput(0, seen);
  bn->replaceInput(op.momentum, graph.insertConstant(0.0));
  if (op.training >= 0) {
    bn->replaceInput(op.training, graph.insertConstant(true));
    return;
  }
  // _native_batch_norm_legit_no_training -> _native_batch_norm_legit(..., training=true, ...)
  std::vector<torch::jit::Value*> inputs(bn->inputs().begin(), bn->inputs().begin() + 5);
  inputs.push_back(graph.insertConstant(true));
  inputs.push_back(bn->input(op.momentum));
  inputs.push_back(bn->input(op.eps));
  // insert() matches the schema (output types included) and packs the three outputs.
  std::vector<torch::jit::NamedValue> args(inputs.begin(), inputs.end());
  torch::jit::Node* packed =
      graph.insert(c10::Symbol::fromQualString("aten::_native_batch_norm_legit"), args)->node();
  for (size_t i = 0; i < bn->outputs().size(); ++i) {
    bn->output(i)->replaceAllUsesWith(packed->input(i));
  }
  packed->destroy();
  bn->destroy();
}

// Inlines every call in `graph` and rewrites each batch normalisation whose running mean is
// a module attribute (not yet observed: a callee rewritten earlier brings its own observe).
// Returns the calls whose statistics are no attribute (a frozen graph's constants).
size_t rewriteGraph(torch::jit::Graph& graph) {
  const c10::Symbol observe = c10::Symbol::fromQualString("bnadapt::observe");
  const c10::Symbol moments = c10::Symbol::fromQualString("bnadapt::batch_moments");
  torch::jit::Inline(graph);
  std::vector<torch::jit::Node*> nodes;
  collectBn(graph.block(), nodes);
  size_t unobserved = 0;
  for (torch::jit::Node* bn : nodes) {
    const BnOp& op = *bnOp(bn);
    if (bn->input(0)->node()->kind() == observe || bn->input(op.mean)->node()->kind() == moments) {
      continue;
    }
    if (!attrPath(bn->input(op.mean), graph.inputs()[0])) {
      if (!isNoneConstant(bn->input(op.mean))) ++unobserved;
      continue;
    }
    observeNode(graph, bn, op);
  }
  return unobserved;
}

std::optional<torch::jit::Module> subModule(torch::jit::Module m, const std::vector<std::string>& path,
                                            size_t count) {
  for (size_t i = 0; i < count; ++i) {
    if (!m.hasattr(path[i]) || !m.attr(path[i]).isModule()) return std::nullopt;
    m = m.attr(path[i]).toModule();
  }
  return m;
}

std::vector<double> toDoubles(const at::Tensor& t) {
  at::Tensor d = t.detach().to(at::kDouble).contiguous().cpu();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

bool isTensorAttr(const torch::jit::Module& m, const std::string& name) {
  return m.hasattr(name) && m.attr(name).isTensor();
}

std::string typeName(const torch::jit::Module& m) {
  return m.type()->name() ? m.type()->name()->name() : "";
}

torch::jit::Module loadModule(const std::string& path) {
  try {
    return torch::jit::load(path, c10::Device(c10::kCPU));
  } catch (const std::exception& e) {
    std::string why = summarizeTorchError(e);
    const std::string newer = newerPyTorchAdvice(path);
    if (newer.empty()) {
      why += " (expected an archive from torch.jit.script(...).save or torch.jit.trace(...).save)";
    } else {
      if (why.back() == '.') why.pop_back();  // summarizeTorchError never returns ""
      why += newer;
    }
    fail(ExitCode::kModel, "model '", path, "' cannot be loaded as TorchScript: ", why);
  }
}

}  // namespace

// What a batch normalisation node tells about the module that owns its statistics.
struct AppliedBn {
  double eps = 0;
  std::string mean_attr;
  std::string var_attr;
};

AdaptableModel::AdaptableModel(const std::string& path, const Prepare& prepare)
    : path_(path), calib_(loadModule(path)), output_(loadModule(path)) {
  if (prepare) {
    prepare(output_);
    prepare(calib_);
  }
  calib_.eval();
  discover();
}

AdaptableModel::~AdaptableModel() = default;

void AdaptableModel::discover() {
  // What every rank must have loaded identically, and the dtype inputs should have.
  Fnv1a hash;
  bool have_dtype = false;
  for (const auto& p : output_.named_parameters(/*recurse=*/true)) {
    if (!have_dtype && at::isFloatingType(p.value.scalar_type())) {
      input_dtype_ = p.value.scalar_type();
      have_dtype = true;
    }
  }
  // Names, dtypes, shapes and the bytes of small tensors (BN buffers included) whole; of a
  // tensor over 64 KiB, 256 evenly spaced 64-byte windows and its last 64 bytes: ranks that
  // loaded different files differ there, and start-up makes no full pass over a large model.
  auto hashAll = [&hash](const auto& named) {
    constexpr size_t kWhole = 64 * 1024, kWindows = 256, kWindow = 64;
    for (const auto& t : named) {
      const at::Tensor c = t.value.contiguous();
      const auto type = static_cast<int>(c.scalar_type());
      hash.update(t.name.data(), t.name.size());
      hash.update(&type, sizeof type);
      hash.update(c.sizes().data(), c.sizes().size() * sizeof(int64_t));
      const auto* bytes = static_cast<const unsigned char*>(c.data_ptr());
      const size_t size = static_cast<size_t>(c.numel()) * c.element_size();
      if (size <= kWhole) {
        hash.update(bytes, size);
        continue;
      }
      for (size_t w = 0; w < kWindows; ++w) {
        hash.update(bytes + (size - kWindow) / kWindows * w, kWindow);
      }
      hash.update(bytes + size - kWindow, kWindow);
    }
  };
  hashAll(output_.named_parameters(/*recurse=*/true));
  hashAll(output_.named_buffers(/*recurse=*/true));
  content_hash_ = hash.digest();

  std::vector<torch::jit::NameModule> modules;
  for (const auto& item : calib_.named_modules()) modules.push_back(item);

  // 1. Rewrite every method graph once, children before parents: a parent that inlines a
  //    child then takes the child's rewritten graph.
  std::unordered_set<const torch::jit::Graph*> rewritten;
  for (auto it = modules.rbegin(); it != modules.rend(); ++it) {
    for (const auto& graph : methodGraphs(it->value)) {
      if (!rewritten.insert(graph.get()).second) continue;
      if (rewriteGraph(*graph) > 0) {
        unobserved_.push_back(it->name.empty() ? std::string("<root>") : it->name);
      }
    }
  }

  // 2. In every instance's graphs, which module's tensors each batch normalisation reads.
  std::unordered_map<const c10::TensorImpl*, AppliedBn> applied;  // by running-mean tensor
  for (const auto& item : modules) {
    for (const auto& graph : methodGraphs(item.value)) {
      std::vector<torch::jit::Node*> nodes;
      collectBn(graph->block(), nodes);
      for (torch::jit::Node* bn : nodes) {
        const BnOp& op = *bnOp(bn);
        auto mean = attrPath(bn->input(op.mean), graph->inputs()[0]);
        auto var = attrPath(bn->input(op.var), graph->inputs()[0]);
        if (!mean || mean->empty()) continue;
        auto owner = subModule(item.value, *mean, mean->size() - 1);
        if (!owner || !isTensorAttr(*owner, mean->back())) continue;
        AppliedBn a;
        a.mean_attr = mean->back();
        a.var_attr = var && !var->empty() ? var->back() : std::string("running_var");
        if (owner->hasattr("eps") && owner->attr("eps").isDouble()) {
          a.eps = owner->attr("eps").toDouble();
        } else if (auto value = torch::jit::toIValue(bn->input(op.eps)); value && value->isDouble()) {
          a.eps = value->toDouble();
        }
        applied.emplace(owner->attr(a.mean_attr).toTensor().unsafeGetTensorImpl(), a);
      }
    }
  }
  collectLayers(applied);
  if (layers_.empty()) failWithoutBatchNorm();
}

namespace {

// Occurrences of names, in order of first appearance: "LayerNorm x12, GroupNorm x4".
struct Counts {
  std::vector<std::pair<std::string, int>> items;
  void add(const std::string& name) {
    auto it = std::find_if(items.begin(), items.end(), [&](const auto& c) { return c.first == name; });
    if (it == items.end()) {
      items.emplace_back(name, 1);
    } else {
      ++it->second;
    }
  }
  std::string str() const {
    std::string out;
    for (const auto& [name, n] : items) out += (out.empty() ? "" : ", ") + name + " x" + std::to_string(n);
    return out;
  }
};

const std::regex kBnKind("^(Sync)?BatchNorm(Act)?([123]d)?$");

// Why a module that owns running statistics, or a BatchNorm without them, is left alone;
// nullopt for every other module.
std::optional<SkippedLayer> leftAlone(const torch::jit::Module& m, const std::string& name,
                                      const std::string& kind) {
  if (isTensorAttr(m, "running_mean") && isTensorAttr(m, "running_var")) {
    if (!m.find_method("forward")) {
      return SkippedLayer{name, kind, "unreached",
                          "the forward never reaches it (a traced model keeps no graph for a "
                          "module its example input did not run): statistics left unchanged"};
    }
    if (kind.find("Frozen") != std::string::npos) {
      return SkippedLayer{name, kind, "frozen",
                          "frozen by design: normalises with fixed running statistics, never "
                          "with batch statistics (no batch_norm call to observe)"};
    }
    return SkippedLayer{name, kind, "not observable",
                        "owns running_mean/running_var, but no forward graph hands them to "
                        "batch_norm (another op or plain arithmetic normalises): its inputs "
                        "cannot be observed"};
  }
  const bool none_buffer = m.hasattr("running_mean") && m.attr("running_mean").isNone() &&
                           kind.find("InstanceNorm") == std::string::npos;
  if (none_buffer || (std::regex_match(kind, kBnKind) && !isTensorAttr(m, "running_mean"))) {
    return SkippedLayer{name, kind, "track_running_stats=False",
                        "track_running_stats=False (no running buffers)"};
  }
  return std::nullopt;
}

}  // namespace

std::string countByCategory(const std::vector<SkippedLayer>& skipped) {
  Counts counts;
  for (const SkippedLayer& s : skipped) counts.add(s.category);
  return counts.str();
}

void AdaptableModel::collectLayers(
    const std::unordered_map<const c10::TensorImpl*, AppliedBn>& applied) {
  std::unordered_map<std::string, torch::jit::Module> outputs;
  for (const auto& item : output_.named_modules()) outputs.emplace(item.name, item.value);
  for (const auto& item : calib_.named_modules()) {
    const torch::jit::Module& m = item.value;
    const std::string kind = typeName(m);
    const std::string name = item.name.empty() ? std::string("<root>") : item.name;
    const AppliedBn* a = nullptr;
    const c10::TensorImpl* key = nullptr;
    for (const auto& attr : m.named_attributes(/*recurse=*/false)) {
      if (!attr.value.isTensor()) continue;
      auto found = applied.find(attr.value.toTensor().unsafeGetTensorImpl());
      if (found != applied.end() && found->second.mean_attr == attr.name) {
        a = &found->second;
        key = found->first;
        break;
      }
    }
    if (a == nullptr) {
      if (auto s = leftAlone(m, name, kind)) skipped_.push_back(std::move(*s));
      continue;
    }
    if (auto seen = keys_.find(key); seen != keys_.end()) {  // one instance, two paths
      layers_[seen->second].aliases.push_back(item.name);
      continue;
    }
    BNA_CHECK(isTensorAttr(m, a->var_attr), ExitCode::kModel, "model '", path_, "': layer '",
              name, "' (", kind, ") normalises with '", a->mean_attr, "' but has no tensor '",
              a->var_attr, "'");
    BnLayer layer;
    layer.name = item.name;
    layer.kind = kind;
    layer.mean_attr = a->mean_attr;
    layer.var_attr = a->var_attr;
    layer.eps = a->eps;
    layer.old_mean = toDoubles(m.attr(a->mean_attr).toTensor());
    layer.old_var = toDoubles(m.attr(a->var_attr).toTensor());
    layer.channels = static_cast<int64_t>(layer.old_mean.size());
    layer.affine = isTensorAttr(m, "weight");
    if (isTensorAttr(m, "num_batches_tracked")) {
      layer.old_num_batches_tracked = m.attr("num_batches_tracked").toTensor().item<int64_t>();
    }
    BNA_CHECK(static_cast<int64_t>(layer.old_var.size()) == layer.channels, ExitCode::kModel,
              "model '", path_, "': layer '", name, "' has running_mean of ", layer.channels,
              " channels but running_var of ", layer.old_var.size());
    auto out = outputs.find(item.name);
    BNA_ASSERT(out != outputs.end(), "layer ", name, " missing in the output copy");
    output_modules_.push_back(out->second);
    keys_.emplace(key, layers_.size());
    layers_.push_back(std::move(layer));
  }
}

void AdaptableModel::failWithoutBatchNorm() const {
  // What normalisation the model does have, by class, in order of first appearance.
  Counts norms;
  for (const auto& item : calib_.named_modules()) {
    const std::string kind = typeName(item.value);
    if (kind.find("Norm") != std::string::npos) norms.add(kind);
  }
  bool graph_bn = false;
  if (norms.items.empty()) {  // no such module: normalisation ops in the (inlined) forward graph
    std::vector<torch::jit::Node*> nodes;
    if (auto method = calib_.find_method("forward")) {
      collectNorms(torch::jit::toGraphFunction(method->function()).graph()->block(), nodes);
    }
    for (torch::jit::Node* n : nodes) {
      graph_bn = graph_bn || bnOp(n) != nullptr;
      norms.add(std::string(n->kind().toQualString()) + " in the graph");
    }
  }
  std::string what = norms.str();
  if (what.empty()) what = "no normalisation layer";
  std::string why;
  if (!skipped_.empty()) {
    why += " (left alone: " + countByCategory(skipped_) + "; first: '" + skipped_.front().name +
           "': " + skipped_.front().reason + ")";
  }
  if (!unobserved_.empty() || graph_bn) {
    why += "; batch_norm runs without module buffers (a frozen graph? torch.jit.freeze folds "
           "BN modules into convolutions and constants: adapt the model before freezing it)";
  }
  fail(ExitCode::kModel, "model '", path_, "': ", what, ": no BatchNorm to adapt", why);
}

std::vector<std::string> AdaptableModel::describeLayers() const {
  std::vector<std::string> lines;
  for (const BnLayer& l : layers_) {
    std::ostringstream os;
    os.precision(12);
    os << "layer '" << l.name << "' " << l.kind << " channels=" << l.channels
       << " eps=" << l.eps << " affine=" << l.affine;
    lines.push_back(os.str());
  }
  for (const SkippedLayer& s : skipped_) {
    lines.push_back("skipped layer '" + s.name + "' " + s.kind + " (" + s.category + ")");
  }
  std::ostringstream os;
  os << "model parameters and buffers hash=" << std::hex << std::setw(16) << std::setfill('0')
     << content_hash_;
  lines.push_back(os.str());
  return lines;
}

void AdaptableModel::moveTo(const c10::Device& device, bool channels_last) {
  torch::NoGradGuard no_grad;
  try {
    // Module::to moves each tensor with set_data: the running_mean keys stay valid.
    if (device != device_) {
      calib_.to(device);
      output_.to(device);
      device_ = device;
    }
    if (channels_last) {
      for (const auto& p : calib_.parameters(/*recurse=*/true)) {
        if (p.dim() == 4) p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
      }
    }
  } catch (const c10::Error& e) {
    fail(ExitCode::kModel, "model '", path_, "' cannot be moved to ", device.str(), ": ",
         summarizeTorchError(e));
  }
}

stats::StatsAccumulator AdaptableModel::makeAccumulator() const {
  std::vector<std::vector<double>> shifts;
  for (const BnLayer& l : layers_) shifts.push_back(l.old_mean);
  return stats::StatsAccumulator(std::move(shifts), device_);
}

void AdaptableModel::calibrate(const at::Tensor& batch, stats::StatsAccumulator& acc) {
  ObserveContext ctx;
  ctx.acc = &acc;
  ctx.layers = &layers_;
  ContextScope scope(&ctx, keys_);
  torch::NoGradGuard no_grad;
  try {
    calib_.forward({batch});
  } catch (const std::exception& e) {
    std::string failure;
    {
      std::lock_guard<std::mutex> lock(ctx.mu);
      failure = ctx.failure;
    }
    if (!failure.empty()) fail(ExitCode::kData, failure);
    fail(ExitCode::kData, "forward of input ", batch.sizes(), " failed: ", summarizeTorchError(e));
  }
}

at::Tensor AdaptableModel::predict(const at::Tensor& batch) {
  torch::NoGradGuard no_grad;
  // A model traced in train mode would update its buffers even in eval(): keep copies.
  std::vector<std::pair<torch::jit::Module, bool>> modes;
  for (const auto& m : output_.modules()) modes.emplace_back(m, m.is_training());
  std::vector<std::pair<at::Tensor, at::Tensor>> saved;
  for (const auto& b : output_.buffers(/*recurse=*/true)) saved.emplace_back(b, b.clone());
  auto restore = [&] {
    for (auto& [m, training] : modes) m.train(training);  // pre-order: parents first
    for (auto& [b, copy] : saved) b.copy_(copy);
  };
  output_.eval();
  c10::IValue out;
  try {
    out = output_.forward({batch});
  } catch (const std::exception& e) {
    restore();
    fail(ExitCode::kModel, "evaluation forward of input ", batch.sizes(), " failed: ",
         summarizeTorchError(e));
  }
  restore();
  BNA_CHECK(out.isTensor() && out.toTensor().dim() == 2 &&
                out.toTensor().size(0) == batch.size(0),
            ExitCode::kModel, "--eval needs a model whose forward returns logits [N, classes]; '",
            path_, "' returned ",
            out.isTensor() ? "a tensor of shape " + c10::str(out.toTensor().sizes())
                           : std::string("a ") + out.tagKind());
  return out.toTensor();
}

void AdaptableModel::setStatistics(size_t layer, const std::vector<double>& mean,
                                   const std::vector<double>& var, int64_t batches) {
  torch::NoGradGuard no_grad;
  torch::jit::Module& m = output_modules_.at(layer);
  const auto c = static_cast<int64_t>(mean.size());
  BNA_ASSERT(c == layers_[layer].channels && var.size() == mean.size());
  auto assign = [&](const char* buffer, const std::vector<double>& values) {
    at::Tensor t = m.attr(buffer).toTensor();
    t.copy_(at::from_blob(const_cast<double*>(values.data()), {c}, at::kDouble));
  };
  assign(layers_[layer].mean_attr.c_str(), mean);
  assign(layers_[layer].var_attr.c_str(), var);
  if (isTensorAttr(m, "num_batches_tracked")) {
    m.attr("num_batches_tracked").toTensor().add_(batches);
  }
}

std::vector<std::pair<std::string, at::Tensor>> AdaptableModel::buffers(size_t layer) const {
  const torch::jit::Module& m = output_modules_.at(layer);
  std::vector<std::pair<std::string, at::Tensor>> out;
  std::vector<std::string> names = {layers_[layer].name};
  names.insert(names.end(), layers_[layer].aliases.begin(), layers_[layer].aliases.end());
  for (const std::string& name : names) {  // a state_dict lists a shared module per path
    const std::string prefix = name.empty() ? "" : name + ".";
    for (const std::string& b : {layers_[layer].mean_attr, layers_[layer].var_attr,
                                 std::string("num_batches_tracked")}) {
      if (isTensorAttr(m, b)) out.emplace_back(prefix + b, m.attr(b).toTensor().cpu());
    }
  }
  return out;
}

void AdaptableModel::save(const std::string& path) const {
  try {
    if (!device_.is_cpu()) {  // saved tensors load where they were saved: the CPU
      torch::jit::Module copy = output_;  // a handle: moving it moves the output copy
      copy.to(c10::Device(c10::kCPU));
    }
    // Through a stream: the archive's folder is then always "archive", not the (temp)
    // file's name, so the same statistics give the same bytes on every run.
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    BNA_CHECK(out.good(), ExitCode::kOutput, "cannot open '", path, "' to save the model");
    output_.save(out);
    out.flush();
    BNA_CHECK(out.good(), ExitCode::kOutput, "cannot write the model to '", path,
              "' (disk full?)");
  } catch (const c10::Error& e) {
    fail(ExitCode::kOutput, "cannot save model to '", path, "': ", summarizeTorchError(e));
  }
}

}  // namespace bnadapt::model
