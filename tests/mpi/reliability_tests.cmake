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
# Deaths: the job fails within 10 s (+ start-up), nothing written, inputs unchanged.
bna_fault(killed_forward nonzero "." 15 0 1:forward:kill)
bna_fault(segv_setup nonzero "." 15 0 1:setup:segv)
bna_fault(exit_allreduce nonzero "." 15 0 1:allreduce:exit)
bna_fault(killed_rank0_write nonzero "." 15 0 0:write:kill)
