# Checkpoint patching: the tool writes precise BN statistics into torch.save / safetensors
# checkpoints; Python checks that only the BN buffers changed (tensors bitwise, objects by
# value, optimizer state untouched) and that OUT.sha256 matches.

add_test(NAME fixtures_checkpoints
         COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/fixtures/make_checkpoints.py ${BNA_FIX})
set_tests_properties(fixtures_checkpoints PROPERTIES FIXTURES_REQUIRED bna_fixtures
                     FIXTURES_SETUP bna_ckpt_fixtures TIMEOUT 300 LABELS checkpoint)

# case: name np model data samples batch checkpoint output-name [TOOL args...] [CHECK args...]
function(bna_checkpoint_case name np model data samples batch ckpt out)
  cmake_parse_arguments(ARG "" "" "TOOL;CHECK" ${ARGN})
  set(dir ${BNA_RUNS}/ckpt_${name})
  bna_mpi_command(cmd ${np} --model ${BNA_FIX}/${model} --data ${BNA_FIX}/${data}
                  --samples ${samples} --batch-size ${batch} --stats-output ${dir}/stats.pt
                  --checkpoint ${BNA_FIX}/${ckpt} --checkpoint-output ${dir}/${out}
                  --report ${dir}/report.json ${ARG_TOOL})
  add_test(NAME run_ckpt_${name} COMMAND ${BNA_SRC_TESTS}/mpi/run_case.sh ${dir} -- ${cmd})
  set_tests_properties(run_ckpt_${name} PROPERTIES FIXTURES_REQUIRED "bna_fixtures;bna_ckpt_fixtures"
                       FIXTURES_SETUP bna_ckpt_${name} ENVIRONMENT "${BNA_MPI_ENV}" TIMEOUT 180
                       LABELS checkpoint)
  add_test(NAME check_ckpt_${name}
           COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/reference/check_checkpoint.py
                   --in ${BNA_FIX}/${ckpt} --out ${dir}/${out} --stats ${dir}/stats.pt
                   --fixtures ${BNA_FIX} ${ARG_CHECK})
  set_tests_properties(check_ckpt_${name} PROPERTIES
                       FIXTURES_REQUIRED "bna_ckpt_fixtures;bna_ckpt_${name}" TIMEOUT 180
                       LABELS checkpoint)
endfunction()

set(BNA_MLP mlp_scripted.pt data_vec48.pt 40 8)
bna_checkpoint_case(nested 2 ${BNA_MLP} ckpt_nested.pt out.pt)
bna_checkpoint_case(module_prefix 1 ${BNA_MLP} ckpt_module_prefix.pt out.pt)
bna_checkpoint_case(model_prefix 3 ${BNA_MLP} ckpt_model_prefix.pt out.pt)
bna_checkpoint_case(half 2 ${BNA_MLP} ckpt_half.pt out.pt)
bna_checkpoint_case(safetensors 2 ${BNA_MLP} ckpt_mlp.safetensors out.safetensors)
bna_checkpoint_case(mixed 2 mixed_scripted.pt data_img16.pt 40 8 ckpt_mixed.pt out.pt)
bna_checkpoint_case(resnet 2 resnet_scripted.pt data_img32.pt 48 16 ckpt_resnet_nested.pt out.pt)
bna_checkpoint_case(ambiguous_with_key 1 ${BNA_MLP} ckpt_ambiguous.pt out.pt
                    TOOL --checkpoint-key ema CHECK --key ema)

# In place: OUT == IN with --in-place, on a copy; compared against the untouched fixture.
set(dir ${BNA_RUNS}/ckpt_in_place)
bna_mpi_command(cmd 2 --model ${BNA_FIX}/mlp_scripted.pt --data ${BNA_FIX}/data_vec48.pt
                --samples 40 --batch-size 8 --stats-output ${dir}/stats.pt
                --checkpoint ${dir}/ckpt.pt --checkpoint-output ${dir}/ckpt.pt --in-place)
add_test(NAME run_ckpt_in_place
         COMMAND ${BNA_SRC_TESTS}/mpi/run_case.sh ${dir} --
                 sh -c "cp '${BNA_FIX}/ckpt_nested.pt' '${dir}/ckpt.pt' && \"$0\" \"$@\"" ${cmd})
set_tests_properties(run_ckpt_in_place PROPERTIES FIXTURES_REQUIRED "bna_fixtures;bna_ckpt_fixtures"
                     FIXTURES_SETUP bna_ckpt_in_place ENVIRONMENT "${BNA_MPI_ENV}" TIMEOUT 180
                     LABELS checkpoint)
add_test(NAME check_ckpt_in_place
         COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/reference/check_checkpoint.py
                 --in ${BNA_FIX}/ckpt_nested.pt --out ${dir}/ckpt.pt --stats ${dir}/stats.pt
                 --fixtures ${BNA_FIX})
set_tests_properties(check_ckpt_in_place PROPERTIES FIXTURES_REQUIRED "bna_ckpt_fixtures;bna_ckpt_in_place"
                     TIMEOUT 180 LABELS checkpoint)

# Refusals: documented code, one line, nothing written, input unchanged.
function(bna_checkpoint_failure name code regex ckpt)
  set(out ${BNA_BAD}/ckpt_out.pt)
  bna_mpi_command(cmd 2 ${BNA_GOOD} --stats-output ${BNA_BAD}/stats.pt --checkpoint ${ckpt}
                  ${ARGN})
  add_test(NAME bad_ckpt_${name}
           COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/mpi/expect.py --code ${code} --stderr ${regex}
                   --absent ${BNA_BAD}/stats.pt --absent ${out} --absent ${out}.sha256
                   --unchanged ${ckpt} -- ${cmd})
  set_tests_properties(bad_ckpt_${name} PROPERTIES FIXTURES_REQUIRED "bna_fixtures;bna_ckpt_fixtures"
                       ENVIRONMENT "${BNA_MPI_ENV}" TIMEOUT 120 LABELS checkpoint
                       RESOURCE_LOCK bad_outputs)
endfunction()

bna_checkpoint_failure(ambiguous 7 "2 state_dicts hold the model's BN buffers. choose one with --checkpoint-key: dict 'model'.*dict 'ema'"
  ${BNA_FIX}/ckpt_ambiguous.pt --checkpoint-output ${BNA_BAD}/ckpt_out.pt)
bna_checkpoint_failure(legacy 7 "legacy torch.save format .*re-save it"
  ${BNA_FIX}/ckpt_legacy.pt --checkpoint-output ${BNA_BAD}/ckpt_out.pt)
bna_checkpoint_failure(wrong_shape 7 "key 'bn1.running_mean' has shape .63. but the model's 'bn1.running_mean' has shape .64."
  ${BNA_FIX}/ckpt_wrong_shape.pt --checkpoint-output ${BNA_BAD}/ckpt_out.pt)
bna_checkpoint_failure(other_model 7 "places hold keys named like the model's BN buffers but none with the model's shapes"
  ${BNA_FIX}/ckpt_resnet_nested.pt --checkpoint-output ${BNA_BAD}/ckpt_out.pt)
bna_checkpoint_failure(out_is_in 6 "is the same file as the input --checkpoint .*--in-place"
  ${BNA_FIX}/ckpt_nested.pt --checkpoint-output ${BNA_FIX}/ckpt_nested.pt)
bna_checkpoint_failure(not_a_checkpoint 7 "neither a torch.save zip archive nor a safetensors file"
  ${BNA_SRC_TESTS}/mpi/configs/malformed.json --checkpoint-output ${BNA_BAD}/ckpt_out.pt)

# ---- weights from the checkpoint (--weights-from checkpoint, the default) -----------------
# The epoch-10 architecture (mlp_scripted.pt) with an epoch-12 checkpoint in each common
# layout, np = 1, 2, 3: the statistics must equal the float64 reference of the checkpoint's
# own weights (mlp_epoch12[_ema]_scripted.pt, the same weights as TorchScript), out.pt must
# carry those weights (check_outputs.py compares its state_dict with the reference model's),
# and the patched checkpoint changes only the chosen dict's BN buffers (check_checkpoint.py:
# every other entry, the other dict included, bitwise equal).
# bna_weights_case(name ckpt out-extension reference-model [TOOL args...] [CHECK args...]
#                  [KIND k ARCH model.pt DATA d.pt SAMPLES s BATCH b]): mlp by default
function(bna_weights_case name ckpt ext ref)
  cmake_parse_arguments(ARG "" "KIND;ARCH;DATA;SAMPLES;BATCH" "TOOL;CHECK" ${ARGN})
  if(NOT ARG_KIND)
    set(ARG_KIND mlp)
    set(ARG_ARCH mlp_scripted.pt)
    set(ARG_DATA data_vec48.pt)
    set(ARG_SAMPLES 40)
    set(ARG_BATCH 8)
  endif()
  set(dirs)
  foreach(np 1 2 3)
    set(dir ${BNA_RUNS}/w12_${name}_np${np})
    list(APPEND dirs ${dir})
    bna_mpi_command(cmd ${np} --model ${BNA_FIX}/${ARG_ARCH} --data ${BNA_FIX}/${ARG_DATA}
                    --samples ${ARG_SAMPLES} --batch-size ${ARG_BATCH} --output ${dir}/out.pt
                    --stats-output ${dir}/stats.pt --report ${dir}/report.json
                    --checkpoint ${BNA_FIX}/${ckpt} --checkpoint-output ${dir}/ckpt${ext}
                    ${ARG_TOOL})
    add_test(NAME run_w12_${name}_np${np} COMMAND ${BNA_SRC_TESTS}/mpi/run_case.sh ${dir} -- ${cmd})
    set_tests_properties(run_w12_${name}_np${np} PROPERTIES
                         FIXTURES_REQUIRED "bna_fixtures;bna_ckpt_fixtures"
                         FIXTURES_SETUP bna_w12_${name} ENVIRONMENT "${BNA_MPI_ENV}" TIMEOUT 180
                         LABELS checkpoint)
    add_test(NAME check_ckpt_w12_${name}_np${np}
             COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/reference/check_checkpoint.py
                     --in ${BNA_FIX}/${ckpt} --out ${dir}/ckpt${ext} --stats ${dir}/stats.pt
                     --fixtures ${BNA_FIX} --weights-report ${dir}/report.json ${ARG_CHECK})
    set_tests_properties(check_ckpt_w12_${name}_np${np} PROPERTIES
                         FIXTURES_REQUIRED "bna_ckpt_fixtures;bna_w12_${name}" TIMEOUT 180
                         LABELS checkpoint)
  endforeach()
  add_test(NAME check_w12_${name}
           COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/reference/check_outputs.py
                   --kind ${ARG_KIND} --model ${BNA_FIX}/${ref} --data ${BNA_FIX}/${ARG_DATA}
                   --samples ${ARG_SAMPLES} --batch-size ${ARG_BATCH} --weighting samples
                   --runs ${dirs})
  set_tests_properties(check_w12_${name} PROPERTIES
                       FIXTURES_REQUIRED "bna_ckpt_fixtures;bna_w12_${name}" TIMEOUT 300
                       LABELS checkpoint)
endfunction()

set(BNA_W12 mlp_epoch12_scripted.pt)
set(BNA_W12_EMA mlp_epoch12_ema_scripted.pt)
bna_weights_case(timm ckpt12_timm.pth.tar .pt ${BNA_W12} TOOL --checkpoint-key state_dict)
bna_weights_case(timm_ema ckpt12_timm.pth.tar .pt ${BNA_W12_EMA}
                 TOOL --checkpoint-key state_dict_ema CHECK --key state_dict_ema)
bna_weights_case(lightning ckpt12_lightning.ckpt .pt ${BNA_W12})
bna_weights_case(ddp ckpt12_ddp.pt .pt ${BNA_W12})
bna_weights_case(torchvision ckpt12_torchvision.pth .pt ${BNA_W12} TOOL --checkpoint-key model)
bna_weights_case(torchvision_ema ckpt12_torchvision.pth .pt ${BNA_W12_EMA}
                 TOOL --checkpoint-key model_ema CHECK --key model_ema --prefix module.)
bna_weights_case(detectron2 ckpt12_detectron2.pth .pt ${BNA_W12})
bna_weights_case(safetensors ckpt12_mlp.safetensors .safetensors ${BNA_W12})
bna_weights_case(resnet_ddp ckpt12_resnet_ddp.pt .pt resnet_epoch12_scripted.pt
                 KIND resnet ARCH resnet_scripted.pt DATA data_img32.pt SAMPLES 48 BATCH 16)

# --weights-from model with the checkpoint the model was exported from: accepted.
bna_checkpoint_case(weights_from_model 2 ${BNA_MLP} ckpt_nested.pt out.pt
                    TOOL --weights-from model)

# Refusals: another architecture, missing and unexpected keys, a value the model's dtype
# cannot hold, and --weights-from model with the epoch-12 weights.
bna_checkpoint_failure(w12_other_arch 7
  "key 'fc3.weight' has shape \\[12, 32\\] but the model's 'fc3.weight' has shape \\[10, 32\\]"
  ${BNA_FIX}/ckpt12_other_arch.pt --checkpoint-output ${BNA_BAD}/ckpt_out.pt)
bna_checkpoint_failure(w12_missing_keys 7
  "does not hold the model's weights: 2 key.s. of the model are missing: 'fc2.bias', 'fc3.weight'"
  ${BNA_FIX}/ckpt12_missing_keys.pt --checkpoint-output ${BNA_BAD}/ckpt_out.pt)
bna_checkpoint_failure(w12_extra_keys 7
  "does not hold the model's weights: 2 key.s. are not in the model: 'fc4.bias', 'fc4.weight'"
  ${BNA_FIX}/ckpt12_extra_keys.pt --checkpoint-output ${BNA_BAD}/ckpt_out.pt)
bna_checkpoint_failure(w12_overflow 7 "key 'fc1.weight': a value does not fit the model's Float"
  ${BNA_FIX}/ckpt12_overflow.pt --checkpoint-output ${BNA_BAD}/ckpt_out.pt)
bna_checkpoint_failure(w12_weights_from_model 7
  "--weights-from model: the model's weights differ from checkpoint .*first at key 'module.fc1.weight' .largest absolute difference [0-9.e-]+"
  ${BNA_FIX}/ckpt12_ddp.pt --checkpoint-output ${BNA_BAD}/ckpt_out.pt --weights-from model)
# A checkpoint larger than this machine's memory (a sparse 8 TiB file, never read whole by the
# check): every rank says what it needs, no crash.
set(huge ${BNA_RUNS}/huge_ckpt/huge.safetensors)
bna_mpi_command(cmd 2 ${BNA_GOOD} --stats-output ${BNA_BAD}/stats.pt --checkpoint ${huge}
                --checkpoint-output ${BNA_BAD}/ckpt_out.pt)
add_test(NAME bad_ckpt_w12_larger_than_memory
         COMMAND ${BNA_SRC_TESTS}/mpi/run_case.sh ${BNA_RUNS}/huge_ckpt -- sh -c
                 "truncate -s 8T '${huge}' && \"$0\" \"$@\"; rc=$?; rm -f '${huge}'; exit $rc"
                 ${BNADAPT_PYTHON}
                 ${BNA_SRC_TESTS}/mpi/expect.py --code 7
                 --stderr "huge.safetensors': reading the state_dict's tensors .8388608 MiB. needs about 16777216 MiB on this rank, 33554432 MiB for the 2 ranks of this host that read it, but only [0-9]+ MiB are available"
                 --absent ${BNA_BAD}/stats.pt --absent ${BNA_BAD}/ckpt_out.pt -- ${cmd})
set_tests_properties(bad_ckpt_w12_larger_than_memory PROPERTIES
                     FIXTURES_REQUIRED bna_fixtures ENVIRONMENT "${BNA_MPI_ENV}" TIMEOUT 120
                     LABELS checkpoint RESOURCE_LOCK bad_outputs)
bna_expect_failure(weights_from_without_checkpoint 1 2
  "--weights-from applies to --checkpoint, which is not given" ${BNA_GOOD} --weights-from model)

# Ranks that read different weights (rank 1 the EMA dict) are refused before any data moves.
bna_mpi_command(rank0 1 ${BNA_GOOD} --checkpoint ${BNA_FIX}/ckpt12_torchvision.pth
                --checkpoint-key model --checkpoint-output ${BNA_BAD}/ckpt_out.pt)
add_test(NAME bad_ckpt_w12_divergent_weights
         COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/mpi/expect.py --code 5
                 --stderr "rank 1 differs from rank 0 before any data moved: .*(hash=|sha256 )"
                 --within 10 --absent ${BNA_BAD}/ckpt_out.pt
                 --unchanged ${BNA_FIX}/ckpt12_torchvision.pth
                 -- ${rank0} : ${MPIEXEC_NUMPROC_FLAG} 1 $<TARGET_FILE:bnadapt_dist> ${BNA_GOOD}
                 --checkpoint ${BNA_FIX}/ckpt12_torchvision.pth --checkpoint-key model_ema
                 --checkpoint-output ${BNA_BAD}/ckpt_out.pt)
set_tests_properties(bad_ckpt_w12_divergent_weights PROPERTIES
                     FIXTURES_REQUIRED "bna_fixtures;bna_ckpt_fixtures" ENVIRONMENT "${BNA_MPI_ENV}"
                     TIMEOUT 120 LABELS checkpoint RESOURCE_LOCK bad_outputs)
