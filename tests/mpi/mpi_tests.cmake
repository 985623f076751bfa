# Multi-rank tests: the real executable under mpiexec at several world sizes, checked against
# a float64 reference computed in Python (Debian's torch), plus bad-input cases.

set(BNA_FIX ${CMAKE_BINARY_DIR}/fixtures)
set(BNA_RUNS ${CMAKE_BINARY_DIR}/mpi_runs)
set(BNA_SRC_TESTS ${CMAKE_CURRENT_SOURCE_DIR})
# Root may run mpiexec in CI containers; more ranks than cores is intended here.
set(BNA_MPI_ENV
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_vader_single_copy_mechanism=none)

add_test(NAME fixtures
         COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/fixtures/make_fixtures.py ${BNA_FIX})
set_tests_properties(fixtures PROPERTIES FIXTURES_SETUP bna_fixtures TIMEOUT 300 LABELS mpi)

# bna_mpi_command(<out-var> <np> <tool args>...): mpiexec -n np bnadapt_dist args
function(bna_mpi_command out np)
  set(${out} ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${np} ${MPIEXEC_PREFLAGS}
      $<TARGET_FILE:bnadapt_dist> ${MPIEXEC_POSTFLAGS} ${ARGN} PARENT_SCOPE)
endfunction()

# bna_mpi_case(<name> <np> <dir> <setup-fixture> <timeout> <labels> <tool args>...): the
# tool under mpiexec at np ranks, run in <dir> (run_case.sh), on the generated fixtures; its
# outputs are fixture <setup-fixture> for the checks that compare them.
function(bna_mpi_case name np dir fixture timeout labels)
  bna_mpi_command(cmd ${np} ${ARGN})
  add_test(NAME ${name} COMMAND ${BNA_SRC_TESTS}/mpi/run_case.sh ${dir} -- ${cmd})
  set_tests_properties(${name} PROPERTIES FIXTURES_REQUIRED bna_fixtures
                       FIXTURES_SETUP ${fixture} ENVIRONMENT "${BNA_MPI_ENV}"
                       TIMEOUT ${timeout} LABELS "${labels}")
endfunction()

# bna_inproc_command(<out-var> <np> <tool args>...): the same job with np ranks as threads of
# one process (tests/inproc/bnadapt_inproc.cpp, over ThreadCommunicator)
function(bna_inproc_command out np)
  set(${out} $<TARGET_FILE:bnadapt_inproc> --ranks ${np} ${ARGN} PARENT_SCOPE)
endfunction()

# ---- correctness against the float64 reference, np = 1, 2, 3, both estimators ------------
# Most cases run their ranks as threads of one process (bna_inproc_command); the cases in
# BNA_REAL_MPI run the real executable under mpiexec at every world size (among them the
# three of the smoke subset, which the LibTorch 1.13 + ASan stage runs).
set(BNA_REAL_MPI resnet_scripted mlp_two_batches mlp_scripted mixed_traced double_scripted)
# case: name kind model data samples batch_size
set(BNA_CASES
    "resnet_scripted resnet resnet_scripted.pt data_img32.pt 200 16"
    "resnet_traced resnet resnet_traced.pt data_img32_dict.pt 200 16"
    "mlp_scripted mlp mlp_scripted.pt data_vec48.pt 64 10"
    "mixed_scripted mixed mixed_scripted.pt data_img16.pt 50 8"
    "mixed_traced mixed mixed_traced.pt data_img16.pt 50 8"
    "reuse_scripted reuse reuse_scripted.pt data_vec48.pt 40 8"
    # 2 global batches: at np = 3 rank 2 runs none and still takes part
    "mlp_two_batches mlp mlp_scripted.pt data_vec48.pt 10 5"
    # BN layers inside torch.jit.fork (run on the inter-op pool)
    "fork_scripted fork fork_scripted.pt data_vec48.pt 40 8"
    # a float64 model: the observed input is float64 and must reach batch_norm unchanged
    "double_scripted double double_scripted.pt data_vec48.pt 40 8"
    # discovery by structure: timm-style BatchNormAct2d, a _BatchNorm subclass, a fused
    # ConvBnReLU2d, native_batch_norm, a BN called twice, one never called; FrozenBatchNorm2d,
    # arithmetic normalisation and track_running_stats=False named as left alone
    "variety_scripted variety variety_scripted.pt data_img16.pt 40 8"
    "variety_traced variety variety_traced.pt data_img16.pt 40 8"
    # BN calls inlined into the root graph (torch._C._jit_pass_inline): adapted all the same
    "inlined_scripted mlp mlp_inlined.pt data_vec48.pt 40 8")
foreach(case IN LISTS BNA_CASES)
  separate_arguments(fields UNIX_COMMAND "${case}")
  list(GET fields 0 name)
  list(GET fields 1 kind)
  list(GET fields 2 model)
  list(GET fields 3 data)
  list(GET fields 4 samples)
  list(GET fields 5 batch)
  foreach(weighting samples batches)
    set(dirs)
    foreach(np 1 2 3)
      set(dir ${BNA_RUNS}/${name}_${weighting}_np${np})
      list(APPEND dirs ${dir})
      set(launch bna_inproc_command)
      if(name IN_LIST BNA_REAL_MPI)
        set(launch bna_mpi_command)
      endif()
      cmake_language(CALL ${launch} cmd ${np} --model ${BNA_FIX}/${model}
                     --data ${BNA_FIX}/${data} --samples ${samples} --batch-size ${batch}
                     --weighting ${weighting} --output ${dir}/out.pt
                     --stats-output ${dir}/stats.pt --report ${dir}/report.json)
      set(test run_${name}_${weighting}_np${np})
      add_test(NAME ${test} COMMAND ${BNA_SRC_TESTS}/mpi/run_case.sh ${dir} -- ${cmd})
      set_tests_properties(${test} PROPERTIES FIXTURES_REQUIRED bna_fixtures
                           FIXTURES_SETUP bna_${name}_${weighting} ENVIRONMENT "${BNA_MPI_ENV}"
                           TIMEOUT 180 LABELS mpi)
    endforeach()
    set(test check_${name}_${weighting})
    add_test(NAME ${test}
             COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/reference/check_outputs.py
                     --kind ${kind} --model ${BNA_FIX}/${model} --data ${BNA_FIX}/${data}
                     --samples ${samples} --batch-size ${batch} --weighting ${weighting}
                     --runs ${dirs})
    set_tests_properties(${test} PROPERTIES FIXTURES_REQUIRED "bna_fixtures;bna_${name}_${weighting}"
                         TIMEOUT 300 LABELS mpi)
  endforeach()
endforeach()

# ---- cores per rank under real launches: the default binding widened, one warning otherwise -
add_test(NAME launch_binding
         COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/mpi/binding_test.py
                 --tool $<TARGET_FILE:bnadapt_dist> --mpiexec ${MPIEXEC_EXECUTABLE}
                 --model ${BNA_FIX}/mlp_scripted.pt --data ${BNA_FIX}/data_vec48.pt)
set_tests_properties(launch_binding PROPERTIES FIXTURES_REQUIRED bna_fixtures
                     ENVIRONMENT "${BNA_MPI_ENV}" TIMEOUT 300 LABELS "mpi;smoke")

# ---- bad input: documented exit code, one clear line, nothing written ---------------------
set(BNA_BAD ${BNA_RUNS}/bad)
file(MAKE_DIRECTORY ${BNA_BAD})
set(BNA_BAD_OUTS --absent ${BNA_BAD}/out.pt --absent ${BNA_BAD}/stats.pt --absent ${BNA_BAD}/report.json)
set(BNA_OUTS --output ${BNA_BAD}/out.pt --stats-output ${BNA_BAD}/stats.pt --report ${BNA_BAD}/report.json)
set(BNA_GOOD --model ${BNA_FIX}/mlp_scripted.pt --data ${BNA_FIX}/data_vec48.pt --samples 20 --batch-size 5)

# bna_expect_failure(<name> <np> <code> <stderr-regex> <tool args>...)
function(bna_expect_failure name np code regex)
  bna_mpi_command(cmd ${np} ${ARGN})
  add_test(NAME bad_${name}
           COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/mpi/expect.py --code ${code}
                   --stderr ${regex} ${BNA_BAD_OUTS}
                   --unchanged ${BNA_FIX}/mlp_scripted.pt --unchanged ${BNA_FIX}/data_vec48.pt
                   -- ${cmd})
  set_tests_properties(bad_${name} PROPERTIES FIXTURES_REQUIRED bna_fixtures
                       ENVIRONMENT "${BNA_MPI_ENV}" TIMEOUT 120 LABELS mpi RESOURCE_LOCK bad_outputs)
endfunction()

bna_expect_failure(missing_model 2 4 "model '.*missing.pt' cannot be loaded"
                   --model ${BNA_FIX}/missing.pt --data ${BNA_FIX}/data_vec48.pt --samples 20 --batch-size 5 ${BNA_OUTS})
bna_expect_failure(corrupt_model 1 4 "corrupt_model.pt' cannot be loaded as TorchScript"
                   --model ${BNA_FIX}/corrupt_model.pt --data ${BNA_FIX}/data_vec48.pt --samples 20 --batch-size 5 ${BNA_OUTS})
bna_expect_failure(no_bn 2 4 "nobn_scripted.pt': no normalisation layer: no BatchNorm to adapt"
                   --model ${BNA_FIX}/nobn_scripted.pt --data ${BNA_FIX}/data_img16.pt --samples 20 --batch-size 5 ${BNA_OUTS})
bna_expect_failure(frozen_model 2 4 "mixed_frozen.pt': aten::batch_norm in the graph x1: no BatchNorm to adapt.*a frozen graph"
                   --model ${BNA_FIX}/mixed_frozen.pt --data ${BNA_FIX}/data_img16.pt --samples 16 --batch-size 8 ${BNA_OUTS})
bna_expect_failure(missing_data 2 3 "data path '.*nothere.pt' does not exist"
                   --model ${BNA_FIX}/mlp_scripted.pt --data ${BNA_FIX}/nothere.pt --samples 20 --batch-size 5 ${BNA_OUTS})
bna_expect_failure(shape_mismatch 2 3 "global batch 0: forward of input \\[5, 5, 7, 7\\] failed"
                   --model ${BNA_FIX}/mlp_scripted.pt --data ${BNA_FIX}/bad_data_shape.pt --samples 10 --batch-size 5 ${BNA_OUTS})
bna_expect_failure(sample_size_mismatch 1 3 "has samples of shape \\[48\\] but input_info.sample_size expects \\[3, 16, 16\\]"
                   --config ${BNA_SRC_TESTS}/mpi/configs/sample_size_img16.json ${BNA_GOOD} ${BNA_OUTS})
bna_expect_failure(malformed_json 2 2 "malformed.json.*(parse|syntax)"
                   --config ${BNA_SRC_TESTS}/mpi/configs/malformed.json ${BNA_GOOD} ${BNA_OUTS})
bna_expect_failure(unknown_key 1 2 "bnadapt_dist.batchsize.*did you mean 'batch_size'"
                   --config ${BNA_SRC_TESTS}/mpi/configs/unknown_key.json ${BNA_GOOD} ${BNA_OUTS})
bna_expect_failure(negative_samples 2 2 "samples.*positive"
                   --model ${BNA_FIX}/mlp_scripted.pt --data ${BNA_FIX}/data_vec48.pt --samples -5 --batch-size 5 ${BNA_OUTS})
bna_expect_failure(negative_samples_config 1 2 "num_bn_adaptation_samples.*positive"
                   --config ${BNA_SRC_TESTS}/mpi/configs/negative_samples.json
                   --model ${BNA_FIX}/mlp_scripted.pt --data ${BNA_FIX}/data_vec48.pt ${BNA_OUTS})
bna_expect_failure(output_is_input 1 6 "is the same file as the input --model"
                   ${BNA_GOOD} --output ${BNA_FIX}/mlp_scripted.pt)
bna_expect_failure(unwritable_output 1 6 "folder '.*no_such_dir' does not exist"
                   ${BNA_GOOD} --output ${BNA_BAD}/no_such_dir/out.pt --stats-output ${BNA_BAD}/stats.pt)

# Ranks that disagree fail before any data moves, naming the rank and the first differing
# item. MPMD launch: rank 0 gets the good inputs, rank 1 the ones given here.
# bna_expect_divergence(<name> <stderr-regex> <rank 1 tool args>...)
function(bna_expect_divergence name regex)
  bna_mpi_command(rank0 1 ${BNA_GOOD} ${BNA_OUTS})
  add_test(NAME bad_${name}
           COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/mpi/expect.py --code 5 --stderr ${regex}
                   --within 10 ${BNA_BAD_OUTS} --unchanged ${BNA_FIX}/mlp_scripted.pt
                   -- ${rank0} : ${MPIEXEC_NUMPROC_FLAG} 1 $<TARGET_FILE:bnadapt_dist> ${ARGN})
  set_tests_properties(bad_${name} PROPERTIES FIXTURES_REQUIRED bna_fixtures
                       ENVIRONMENT "${BNA_MPI_ENV}" TIMEOUT 120 LABELS mpi RESOURCE_LOCK bad_outputs)
endfunction()

bna_expect_divergence(divergent_model
  "rank 1 differs from rank 0 before any data moved: rank 0 has 'layer 'bn1' BatchNorm1d channels=64.*rank 1 has 'layer 'bn' BatchNorm1d channels=32"
  --model ${BNA_FIX}/reuse_scripted.pt --data ${BNA_FIX}/data_vec48.pt --samples 20 --batch-size 5 ${BNA_OUTS})
bna_expect_divergence(divergent_model_contents
  "rank 1 differs from rank 0 .*'model parameters and buffers hash="
  --model ${BNA_FIX}/mlp_scripted_shifted.pt --data ${BNA_FIX}/data_vec48.pt --samples 20 --batch-size 5 ${BNA_OUTS})
bna_expect_divergence(divergent_data_contents
  "rank 1 differs from rank 0 .*'data samples=75 shape=\\[48\\] dtype=Float labels=no hash="
  --model ${BNA_FIX}/mlp_scripted.pt --data ${BNA_FIX}/data_vec48_other.pt --samples 20 --batch-size 5 ${BNA_OUTS})
bna_expect_divergence(divergent_eps
  "rank 1 differs from rank 0 .*'layer 'bn2' BatchNorm1d channels=32 eps=1e-05.*'layer 'bn2' BatchNorm1d channels=32 eps=0.001"
  --model ${BNA_FIX}/mlp_scripted_eps.pt --data ${BNA_FIX}/data_vec48.pt --samples 20 --batch-size 5 ${BNA_OUTS})
bna_expect_divergence(divergent_settings
  "rank 1 differs from rank 0 .*'weighting=samples seed=0 shuffle=no'.*'weighting=batches seed=0 shuffle=no'"
  ${BNA_GOOD} --weighting batches ${BNA_OUTS})

# An output path that is a folder, or the config file, is refused before any work.
bna_expect_failure(output_is_folder 2 6 "cannot write '.*mpi_runs/bad': it is a folder"
                   ${BNA_GOOD} --report ${BNA_BAD} --stats-output ${BNA_BAD}/stats.pt)
bna_expect_failure(output_is_config 1 6 "is the same file as the input --config"
                   --config ${BNA_SRC_TESTS}/mpi/configs/sample_size_img16.json --model ${BNA_FIX}/mlp_scripted.pt
                   --data synthetic --samples 20 --report ${BNA_SRC_TESTS}/mpi/configs/sample_size_img16.json)

# An output that reaches an input through a symlink is refused too.
file(CREATE_LINK ${BNA_FIX}/data_vec48.pt ${BNA_BAD}/link_to_data.pt SYMBOLIC)
bna_expect_failure(output_is_input_via_symlink 2 6 "is the same file as the input --data"
                   ${BNA_GOOD} --stats-output ${BNA_BAD}/link_to_data.pt)

include(${CMAKE_CURRENT_LIST_DIR}/checkpoint_tests.cmake)
include(${CMAKE_CURRENT_LIST_DIR}/data_tests.cmake)
include(${CMAKE_CURRENT_LIST_DIR}/reliability_tests.cmake)
include(${CMAKE_CURRENT_LIST_DIR}/device_tests.cmake)
include(${CMAKE_CURRENT_LIST_DIR}/zoo_tests.cmake)
include(${CMAKE_CURRENT_LIST_DIR}/scale_tests.cmake)

# A LibTorch 1.x build given a model that PyTorch 2.x saved with an operator 1.x lacks: exit 4,
# both versions named, what to do. Needs a torch 2.x Python to write it (BNADAPT_NEWER_PYTHON,
# which launch/test.sh sets to .venv's for the 1.13 build).
set(BNADAPT_NEWER_PYTHON "" CACHE FILEPATH "Python with torch 2.x, for the 1.x build's newer-model test")
if(Torch_VERSION VERSION_LESS 2.0 AND BNADAPT_NEWER_PYTHON)
  add_test(NAME fixture_newer_model
           COMMAND ${BNADAPT_NEWER_PYTHON} ${BNA_SRC_TESTS}/fixtures/make_newer_model.py
                   ${BNA_BAD}/newer_torch_model.pt)
  set_tests_properties(fixture_newer_model PROPERTIES FIXTURES_SETUP bna_newer_model LABELS mpi TIMEOUT 120)
  bna_expect_failure(newer_torch_model 1 4
                     "newer_torch_model.pt' cannot be loaded as TorchScript: .*saved by PyTorch 2.x .*newer than this build's LibTorch 1\\.13.*re-export the model with torch.jit.save from PyTorch 1\\.13"
                     --model ${BNA_BAD}/newer_torch_model.pt --data ${BNA_FIX}/data_vec48.pt --samples 20 --batch-size 5 ${BNA_OUTS})
  set_property(TEST bad_newer_torch_model APPEND PROPERTY FIXTURES_REQUIRED bna_newer_model)
  set_property(TEST bad_newer_torch_model APPEND PROPERTY LABELS smoke)
endif()
