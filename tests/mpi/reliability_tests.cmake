# Reliability: a dead, stopped or hung rank never leaves the job hanging or writes output.
# Faults are injected with BNADAPT_FAULT=RANK:PHASE:ACTION (src/app/fault_injection.h).

# bna_fault(<name> <code|nonzero> <regex> <within-seconds> <min-error-lines> <fault> <tool args>...)
function(bna_fault name code regex within min_errors fault)
  bna_mpi_command(cmd 2 ${BNA_GOOD} ${BNA_OUTS} ${ARGN})
  add_test(NAME fault_${name}
           COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/mpi/expect.py --code ${code} --stderr ${regex}
                   --within ${within} --min-error-lines ${min_errors} --max-error-lines 2
                   ${BNA_BAD_OUTS} --unchanged ${BNA_FIX}/mlp_scripted.pt
                   --unchanged ${BNA_FIX}/data_vec48.pt -- ${cmd})
  set_tests_properties(fault_${name} PROPERTIES FIXTURES_REQUIRED bna_fixtures
                       ENVIRONMENT "${BNA_MPI_ENV};BNADAPT_FAULT=${fault}" TIMEOUT 60
                       LABELS reliability RESOURCE_LOCK bad_outputs)
endfunction()

# Hangs: every rank ends within --timeout (3 s) + 5 s (+ start-up), exit 8, naming the phase.
bna_fault(hang_forward 8 "no progress for [0-9]+ s during the forward passes" 15 1
          1:forward:sleep --timeout 3)
bna_fault(hang_allreduce 8 "no progress for [0-9]+ s during the all-reduce of the statistics" 15 1
          1:allreduce:sleep --timeout 3)
bna_fault(stopped_rank 8 "no progress for [0-9]+ s during" 15 1 1:forward:stop --timeout 3)
bna_fault(hang_setup 8 "no progress for [0-9]+ s during setup" 15 1 1:setup:sleep --timeout 3)
# Start-up is watched too (the watchdog starts before MPI, with the command line's --timeout):
# a rank hung or stopped before MPI initialisation or while reading the settings, and rank 0
# hung just before writing: exit 8 within --timeout + 10 s, nothing written.
bna_fault(hang_mpi_init 8 "no progress for [0-9]+ s during MPI initialisation" 13 1
          1:mpi-init:sleep --timeout 3)
bna_fault(stopped_mpi_init 8 "no progress for [0-9]+ s during MPI initialisation" 13 1
          1:mpi-init:stop --timeout 3)
bna_fault(hang_settings 8 "no progress for [0-9]+ s during reading the settings" 13 1
          1:settings:sleep --timeout 3)
bna_fault(stopped_settings 8 "no progress for [0-9]+ s during reading the settings" 13 1
          1:settings:stop --timeout 3)
bna_fault(hang_write 8 "no progress for [0-9]+ s during writing the outputs" 13 1
          0:write:sleep --timeout 3)
# A rank started from another build: exit 5 naming both, before anything else is exchanged.
bna_fault(other_build 5 "rank 1 runs bnadapt_dist 0[.]0[.]9 \\(test\\) but rank 0 runs bnadapt_dist [0-9.]+ \\(LibTorch"
          15 1 "1:version:bnadapt_dist 0.0.9 (test)")
# Deaths: rank 1 exits, is SIGKILLed or segfaults before the forward passes, during them, or
# inside the all-reduce: the job fails within 10 s (+ start-up), nothing written, inputs
# unchanged.
foreach(action exit kill segv)
  foreach(phase setup forward allreduce)
    bna_fault(${action}_${phase} nonzero "." 15 0 1:${phase}:${action})
  endforeach()
endforeach()
bna_fault(killed_rank0_write nonzero "." 15 0 0:write:kill)
# An out-of-memory on one rank (injected: the error a failed allocation raises) ends every
# rank through the agreed failure path, naming the rank.
bna_fault(oom_forward 3 "rank 1 failed during the forward passes: injected out-of-memory" 15 1
          1:forward:oom)

# ---- exact reduction: binary-fraction data through Identity -> BN1d, uneven shards -------
# np = 1, 2, 3 (4 batches: ranks get 2/1/1 at np = 3) equal the exact rational result bit for
# bit; two reruns write byte-identical models.
set(BNA_REL ${BNA_RUNS}/reliability)
set(exact_stats)
foreach(np 1 2 3)
  set(dir ${BNA_REL}/exact_np${np})
  list(APPEND exact_stats ${dir}/stats.pt)
  bna_mpi_case(rel_exact_np${np} ${np} ${dir} bna_exact 60 reliability
               --model ${BNA_FIX}/exact_scripted.pt --data ${BNA_FIX}/data_exact.pt
               --samples 32 --batch-size 8 --output ${dir}/out.pt --stats-output ${dir}/stats.pt)
endforeach()
bna_mpi_case(rel_exact_rerun 2 ${BNA_REL}/exact_rerun bna_exact 60 reliability
             --model ${BNA_FIX}/exact_scripted.pt --data ${BNA_FIX}/data_exact.pt
             --samples 32 --batch-size 8 --output ${BNA_REL}/exact_rerun/out.pt)
add_test(NAME rel_exact_check
         COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/reference/check_exact.py --mode exact
                 --data ${BNA_FIX}/data_exact.pt --batches 4 --stats ${exact_stats})
add_test(NAME rel_exact_rerun_same_bytes
         COMMAND ${CMAKE_COMMAND} -E compare_files ${BNA_REL}/exact_np2/out.pt
                 ${BNA_REL}/exact_rerun/out.pt)
set_tests_properties(rel_exact_check rel_exact_rerun_same_bytes PROPERTIES
                     FIXTURES_REQUIRED "bna_fixtures;bna_exact" TIMEOUT 60 LABELS reliability)

# ---- precision: mean/sigma = 1e4 and 2e4, a constant channel ------------------------------
foreach(np 1 3)
  set(dir ${BNA_REL}/precision_np${np})
  bna_mpi_case(rel_precision_np${np} ${np} ${dir} bna_precision 60 reliability
               --model ${BNA_FIX}/exact_scripted.pt --data ${BNA_FIX}/data_precision.pt
               --samples 64 --batch-size 8 --stats-output ${dir}/stats.pt)
endforeach()
add_test(NAME rel_precision_check
         COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/reference/check_exact.py --mode precision
                 --data ${BNA_FIX}/data_precision.pt
                 --stats ${BNA_REL}/precision_np1/stats.pt ${BNA_REL}/precision_np3/stats.pt)
set_tests_properties(rel_precision_check PROPERTIES
                     FIXTURES_REQUIRED "bna_fixtures;bna_precision" TIMEOUT 60 LABELS reliability)

# ---- empty shards: fewer batches than ranks gives the np = 1 result ----------------------
# gray CNN (BN2d: one sample still gives 28 x 28 values per channel) on 1 sample at np = 1, 2
# and on 2 samples at np = 1, 3.
foreach(case "1 1;1 2" "2 1;2 3")
  foreach(run IN LISTS case)
    separate_arguments(run)
    list(GET run 0 n)
    list(GET run 1 np)
    set(dir ${BNA_REL}/empty_n${n}_np${np})
    bna_mpi_command(cmd ${np} --config ${BNA_DFIX}/gray28.json --model ${BNA_FIX}/gray_scripted.pt
                    --data ${BNA_DFIX}/small-images-idx3-ubyte.gz --samples ${n} --batch-size 1
                    --stats-output ${dir}/stats.pt)
    add_test(NAME rel_empty_n${n}_np${np} COMMAND ${BNA_SRC_TESTS}/mpi/run_case.sh ${dir} -- ${cmd})
    set_tests_properties(rel_empty_n${n}_np${np} PROPERTIES
                         FIXTURES_REQUIRED "bna_fixtures;bna_data_fixtures"
                         FIXTURES_SETUP bna_empty_n${n} ENVIRONMENT "${BNA_MPI_ENV}" TIMEOUT 60
                         LABELS reliability)
  endforeach()
endforeach()
add_test(NAME rel_empty_n1_np2_eq_np1 COMMAND ${CMAKE_COMMAND} -E compare_files
         ${BNA_REL}/empty_n1_np1/stats.pt ${BNA_REL}/empty_n1_np2/stats.pt)
set_tests_properties(rel_empty_n1_np2_eq_np1 PROPERTIES FIXTURES_REQUIRED bna_empty_n1
                     TIMEOUT 60 LABELS reliability)
add_test(NAME rel_empty_n2_np3_eq_np1 COMMAND ${CMAKE_COMMAND} -E compare_files
         ${BNA_REL}/empty_n2_np1/stats.pt ${BNA_REL}/empty_n2_np3/stats.pt)
set_tests_properties(rel_empty_n2_np3_eq_np1 PROPERTIES FIXTURES_REQUIRED bna_empty_n2
                     TIMEOUT 60 LABELS reliability)
bna_expect_failure(zero_samples 2 2 "option '--samples': expected a positive integer"
                   --model ${BNA_FIX}/mlp_scripted.pt --data ${BNA_FIX}/data_vec48.pt --samples 0 ${BNA_OUTS})
bna_expect_failure(empty_data 2 3 "data file '.*data_empty.pt' holds no samples"
                   --model ${BNA_FIX}/mlp_scripted.pt --data ${BNA_FIX}/data_empty.pt --samples 5 ${BNA_OUTS})

# ---- non-finite: one NaN / Inf sample on rank 1 -> every rank stops, naming layer, rank,
# batch; nothing written.
foreach(kind nan inf)
  bna_expect_failure(nonfinite_${kind} 2 3
                     "rank 1 failed during the forward passes: rank 1, global batch 5: layer 'bn1': non-finite activation in channel"
                     --model ${BNA_FIX}/mlp_scripted.pt --data ${BNA_FIX}/data_vec48_${kind}.pt
                     --samples 40 --batch-size 5 ${BNA_OUTS})
endforeach()

# ---- existing outputs: refused without --overwrite (exit 6, untouched), replaced with it ---
set(BNA_EXISTING ${BNA_RUNS}/existing)
file(MAKE_DIRECTORY ${BNA_EXISTING})
file(WRITE ${BNA_EXISTING}/stats.pt "an earlier result\n")
bna_mpi_command(cmd 2 ${BNA_GOOD} --stats-output ${BNA_EXISTING}/stats.pt)
add_test(NAME bad_existing_output
         COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/mpi/expect.py --code 6
                 --stderr "--stats-output '.*existing/stats.pt' exists; pass --overwrite"
                 --unchanged ${BNA_EXISTING}/stats.pt -- ${cmd})
set_tests_properties(bad_existing_output PROPERTIES FIXTURES_REQUIRED bna_fixtures
                     ENVIRONMENT "${BNA_MPI_ENV}" TIMEOUT 60 LABELS reliability)

# ---- crash-safe writing: rank 0 SIGKILLed before, mid and after writing (fsynced, not yet
# renamed), half of the runs over earlier outputs: every target absent or complete (loads in
# Python, sidecar matches), no temp file left, inputs unchanged. Per commit 3 runs per kill
# point; the long tier 20.
add_test(NAME rel_crash_write_smoke
         COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/mpi/crash_write_test.py
                 --tool $<TARGET_FILE:bnadapt_dist> --mpiexec ${MPIEXEC_EXECUTABLE}
                 --fixtures ${BNA_FIX} --out ${BNA_RUNS}/crash_write_smoke --reps 3 --np2-reps 1)
set_tests_properties(rel_crash_write_smoke PROPERTIES FIXTURES_REQUIRED "bna_fixtures;bna_ckpt_fixtures"
                     ENVIRONMENT "${BNA_MPI_ENV}" TIMEOUT 400 LABELS reliability PROCESSORS 2)
add_test(NAME rel_crash_write
         COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/mpi/crash_write_test.py
                 --tool $<TARGET_FILE:bnadapt_dist> --mpiexec ${MPIEXEC_EXECUTABLE}
                 --fixtures ${BNA_FIX} --out ${BNA_RUNS}/crash_write)
set_tests_properties(rel_crash_write PROPERTIES FIXTURES_REQUIRED "bna_fixtures;bna_ckpt_fixtures"
                     ENVIRONMENT "${BNA_MPI_ENV}" TIMEOUT 400 LABELS "reliability;long" PROCESSORS 2)
