#include "model/adaptable_model.h"

#include <iomanip>
#include <fstream>
#include <mutex>
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
// bnadapt::observe(x, key) -> x, inserted before every rewritten aten::batch_norm. `key` is
// the layer's running_mean, which tells the instances of a shared BN type apart.

// Process-wide, not thread-local: torch.jit.fork runs subgraphs on the inter-op pool.
struct ObserveContext {
  stats::StatsAccumulator* acc = nullptr;
  const std::unordered_map<const c10::TensorImpl*, size_t>* keys = nullptr;
  const std::vector<BnLayer>* layers = nullptr;
  std::string failure;  // the first layer that rejected its input
};
std::mutex g_observe_mu;
ObserveContext* g_context = nullptr;  // guarded by g_observe_mu

at::Tensor observeOp(const at::Tensor& x, const c10::optional<at::Tensor>& key) {
  std::lock_guard<std::mutex> lock(g_observe_mu);
  ObserveContext* ctx = g_context;
  if (ctx == nullptr || !key.has_value()) return x;  // run outside calibration: a no-op
  auto it = ctx->keys->find(key->unsafeGetTensorImpl());
  if (it == ctx->keys->end()) {
    ctx->failure = "a BatchNorm layer that was not registered ran (its running_mean changed?)";
    throw std::runtime_error(ctx->failure);
  }
  try {
    ctx->acc->observe(it->second, x);
  } catch (const std::exception& e) {
    if (ctx->failure.empty()) {
      ctx->failure = "layer '" + (*ctx->layers)[it->second].name + "': " + e.what();
    }
    throw;
  }
  return x;
}

TORCH_LIBRARY(bnadapt, m) {
  m.def(torch::schema("bnadapt::observe(Tensor x, Tensor? key) -> Tensor",
                      c10::AliasAnalysisKind::CONSERVATIVE),
        &observeOp);
}

class ContextScope {
 public:
  explicit ContextScope(ObserveContext* ctx) {
    std::lock_guard<std::mutex> lock(g_observe_mu);
    g_context = ctx;
  }
  ~ContextScope() {
    std::lock_guard<std::mutex> lock(g_observe_mu);
    g_context = nullptr;
  }
};

// ---- graph helpers -----------------------------------------------------------------------

void collect(torch::jit::Block* block, c10::Symbol kind, std::vector<torch::jit::Node*>& out) {
  for (torch::jit::Node* node : block->nodes()) {
    if (node->kind() == kind) out.push_back(node);
    for (torch::jit::Block* sub : node->blocks()) collect(sub, kind, out);
  }
}

std::shared_ptr<torch::jit::Graph> forwardGraph(const torch::jit::Module& m) {
  auto method = m.find_method("forward");
  if (!method) return nullptr;
  return torch::jit::toGraphFunction(method->function()).graph();
}

std::vector<double> toDoubles(const at::Tensor& t) {
  at::Tensor d = t.detach().to(at::kDouble).contiguous().cpu();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

bool isTensorAttr(const torch::jit::Module& m, const std::string& name) {
  return m.hasattr(name) && m.attr(name).isTensor();
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

const std::regex kBnName("^BatchNorm[123]d$");

}  // namespace

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
  std::unordered_map<std::string, torch::jit::Module> outputs;
  for (const auto& item : output_.named_modules()) outputs.emplace(item.name, item.value);

  // What every rank must have loaded identically, and the dtype inputs should have.
  Fnv1a hash;
  bool have_dtype = false;
  for (const auto& p : output_.named_parameters(/*recurse=*/true)) {
    if (!have_dtype && at::isFloatingType(p.value.scalar_type())) {
      input_dtype_ = p.value.scalar_type();
      have_dtype = true;
    }
  }
  auto hashAll = [&hash](const auto& named) {
    for (const auto& t : named) {
      at::Tensor c = t.value.contiguous();
      hash.update(t.name.data(), t.name.size());
      hash.update(c.data_ptr(), c.numel() * c.element_size());
    }
  };
  hashAll(output_.named_parameters(/*recurse=*/true));
  hashAll(output_.named_buffers(/*recurse=*/true));
  content_hash_ = hash.digest();

  const c10::Symbol batch_norm = c10::Symbol::fromQualString("aten::batch_norm");
  const c10::Symbol observe = c10::Symbol::fromQualString("bnadapt::observe");
  std::unordered_map<const torch::jit::Graph*, double> rewritten;  // graph -> eps
  for (const auto& item : calib_.named_modules()) {
    const torch::jit::Module& m = item.value;
    const std::string kind = m.type()->name() ? m.type()->name()->name() : "";
    const std::string name = item.name.empty() ? std::string("<root>") : item.name;
    if (!std::regex_match(kind, kBnName)) {
      if (auto graph = forwardGraph(m)) {
        std::vector<torch::jit::Node*> direct;
        collect(graph->block(), batch_norm, direct);
        if (!direct.empty()) inlined_.push_back(name);
      }
      continue;
    }
    if (!isTensorAttr(m, "running_mean") || !isTensorAttr(m, "running_var")) {
      skipped_.push_back({name, kind, "track_running_stats=False (no running buffers)"});
      continue;
    }
    const c10::TensorImpl* key = m.attr("running_mean").toTensor().unsafeGetTensorImpl();
    if (auto seen = keys_.find(key); seen != keys_.end()) {  // one instance, two paths
      layers_[seen->second].aliases.push_back(item.name);
      continue;
    }
    auto graph = forwardGraph(m);
    BNA_CHECK(graph != nullptr, ExitCode::kModel, "model '", path_, "': layer '", name,
              "' (", kind, ") has no forward method");
    BnLayer layer;
    layer.name = item.name;
    layer.kind = kind;
    layer.old_mean = toDoubles(m.attr("running_mean").toTensor());
    layer.old_var = toDoubles(m.attr("running_var").toTensor());
    layer.channels = static_cast<int64_t>(layer.old_mean.size());
    layer.affine = isTensorAttr(m, "weight");
    if (isTensorAttr(m, "num_batches_tracked")) {
      layer.old_num_batches_tracked = m.attr("num_batches_tracked").toTensor().item<int64_t>();
    }
    BNA_CHECK(static_cast<int64_t>(layer.old_var.size()) == layer.channels, ExitCode::kModel,
              "model '", path_, "': layer '", name, "' has running_mean of ", layer.channels,
              " channels but running_var of ", layer.old_var.size());

    // A scripted BN type is shared by its instances: rewrite its graph once.
    auto done = rewritten.find(graph.get());
    if (done == rewritten.end()) {
      torch::jit::Inline(*graph);
      std::vector<torch::jit::Node*> bns;
      collect(graph->block(), batch_norm, bns);
      BNA_CHECK(bns.size() == 1, ExitCode::kModel, "model '", path_, "': layer '", name, "' (",
                kind, ") calls aten::batch_norm ", bns.size(), " times in its forward, expected once");
      torch::jit::Node* bn = bns[0];
      double eps = 0;
      if (auto value = torch::jit::toIValue(bn->input(7)); value && value->isDouble()) {
        eps = value->toDouble();
      }
      torch::jit::WithInsertPoint guard(bn);
      torch::jit::Value* seen = graph->insert(observe, {bn->input(0), bn->input(3)});
      bn->replaceInput(0, seen);
      bn->replaceInput(5, graph->insertConstant(true));  // training: batch statistics
      done = rewritten.emplace(graph.get(), eps).first;
    }
    layer.eps = done->second;

    auto out = outputs.find(item.name);
    BNA_ASSERT(out != outputs.end(), "layer ", name, " missing in the output copy");
    output_modules_.push_back(out->second);
    keys_.emplace(key, layers_.size());
    layers_.push_back(std::move(layer));
  }
  if (layers_.empty()) {
    std::string why = skipped_.empty()
                          ? "it contains no BatchNorm1d/2d/3d module"
                          : "its " + std::to_string(skipped_.size()) +
                                " BatchNorm layer(s) all have track_running_stats=False";
    if (!inlined_.empty()) {
      why += "; aten::batch_norm is called directly in '" + inlined_.front() +
             "' (an inlined or frozen graph: script or trace the model without inlining)";
    }
    fail(ExitCode::kModel, "model '", path_, "' has no BatchNorm layer to adapt: ", why);
  }
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
    lines.push_back("skipped layer '" + s.name + "' " + s.kind);
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
  ctx.keys = &keys_;
  ctx.layers = &layers_;
  ContextScope scope(&ctx);
  torch::NoGradGuard no_grad;
  try {
    calib_.forward({batch});
  } catch (const std::exception& e) {
    if (!ctx.failure.empty()) fail(ExitCode::kData, ctx.failure);
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
  assign("running_mean", mean);
  assign("running_var", var);
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
    for (const char* b : {"running_mean", "running_var", "num_batches_tracked"}) {
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
