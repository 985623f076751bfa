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
