// One rank's run of the pipeline, one method per phase, called in order by app::run():
//
//   start              the settings in the log
//   place              device and backend, autocast (this thread's), the loader's options
//   load               setup: model (two copies; with --checkpoint, the checkpoint's weights), data, plans
//   checkConsistency   every rank has rank 0's settings, model and data (before data moves)
//   connect            the device communicator for the statistics (NCCL), if any
//   evaluateBefore     --eval: top-1 before adaptation
//   forward            this rank's batches through the calibration copy
//   checkStatistics    on a GPU: non-finite activations (once, not per batch)
//   reduce             one all-reduce: the statistics and every rank's report numbers
//   finalize           the new statistics into the output copy (every rank)
//   evaluateAfter      --eval: top-1 after adaptation
//   write              rank 0 stages every output, then commits them all
//   shutdown           the device communicator's orderly end
//
// Each phase is a collective: every rank calls it, and it returns 0 or the exit code every
// rank agreed on (app/agreement.h); the caller stops at the first non-zero. A failed
// collective throws (the ranks can no longer agree; app::main ends the job).
//
// A Job holds no process-wide state: what the process shares (intra-op threads, TF32, the
// log's identity) is set by app::main (configureProcess), and autocast is the calling
// thread's, restored when the Job ends. So ranks can also run as threads of one process
// over ThreadCommunicator (the in-process tests do).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "app/placement.h"
#include "app/watchdog.h"
#include "checkpoint/checkpoint.h"
#include "common/torch_compat.h"
#include "comm/communicator.h"
#include "comm/make_communicator.h"
#include "config/settings.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/sharding.h"
#include "io/stats_file.h"
#include "model/adaptable_model.h"
#include "report/progress.h"
#include "report/report.h"
#include "stats/accumulator.h"

namespace bnadapt::app {

class Job {
 public:
  // `watchdog` (the process's, running since before MPI started) sees every phase; no
  // collective.
  Job(const config::Settings& settings, comm::Communicator& comm, Watchdog& watchdog);
  ~Job();  // aborts the device communicator when shutdown() was not reached
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  int start();
  int place();
  int load();
  int checkConsistency();
  int connect();
  int evaluateBefore();
  int forward();
  int checkStatistics();
  int reduce();
  int finalize();
  int evaluateAfter();
  int write();
  int shutdown();

 private:
  void openInputs();              // load's work on this rank
  void logInputs() const;         // what load found, from rank 0
  // forward's work on this rank: its batches `mine`, in order.
  void forwardBatches(const std::vector<int64_t>& mine, report::Progress& progress);
  at::Tensor toModel(const at::Tensor& x) const;
  void describeRun();             // the report's fields known before finalize
  void adaptLayers();             // finalize's work on this rank
  void stageAndCommit();          // write's work on rank 0
  comm::Communicator& reducer();  // the device communicator, or comm_

  const config::Settings& st_;
  comm::Communicator& comm_;
  const int rank_;
  const int world_;
  const std::chrono::steady_clock::time_point t_start_;
  const double process_start_seconds_;  // process exec -> this Job (-1: unknown)
  const int threads_;       // intra-op, per rank
  const int data_threads_;  // decoding, per rank
  Watchdog& watchdog_;

  Placement place_;
  bool bf16_ = false;  // --autocast bf16
  std::optional<compat::AutocastScope> autocast_;  // while bf16_
  data::LoaderOptions loading_;

  std::unique_ptr<model::AdaptableModel> model_;
  std::unique_ptr<data::Dataset> data_;
  std::unique_ptr<data::Dataset> eval_data_;
  std::unique_ptr<checkpoint::Checkpoint> ckpt_;  // rank 0 only
  data::BatchPlan plan_;
  data::BatchPlan eval_plan_;
  std::vector<int64_t> order_;
  std::unique_ptr<comm::OwnedCommunicator> device_comm_;  // null: the all-reduce runs on comm_

  report::RunSummary run_;
  std::optional<stats::StatsAccumulator> acc_;
  report::RankInfo me_;  // me_.batches: batches forwarded (a batch can lose every sample)
  io::NamedTensors buffers_;  // the new BN buffers, for the stats file and the checkpoint
};

}  // namespace bnadapt::app
