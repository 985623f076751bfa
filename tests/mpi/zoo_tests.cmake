# Model zoo: every architecture of tests/fixtures/zoo.py (timm and torchvision, random
# weights, nothing downloaded), saved by the torch of BNADAPT_PYTHON, adapted at np = 1 and 2
# (12 samples in 3 batches of 4: uneven shards at np 2) and checked against the float64
# reference (check_outputs.py: statistics, left-alone and unreached layers, out.pt). Tier
# "commit" per commit, "long" with the long tier; "nobn" models must exit 4 naming their
# normalisation. Needs timm and torchvision in BNADAPT_PYTHON (else the zoo is not added).
execute_process(COMMAND ${BNADAPT_PYTHON} -c "import timm, torchvision"
                RESULT_VARIABLE bna_zoo_missing OUTPUT_QUIET ERROR_QUIET)
if(bna_zoo_missing)
  message(STATUS "zoo tests off: ${BNADAPT_PYTHON} cannot import timm and torchvision")
  return()
endif()
execute_process(COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/fixtures/zoo.py --list
                OUTPUT_VARIABLE bna_zoo_list RESULT_VARIABLE bna_zoo_rc)
if(bna_zoo_rc)
  message(FATAL_ERROR "tests/fixtures/zoo.py --list failed")
endif()
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${BNA_SRC_TESTS}/fixtures/zoo.py)
set(BNA_ZOO ${CMAKE_BINARY_DIR}/zoo)
string(REPLACE "\n" ";" bna_zoo_lines "${bna_zoo_list}")
foreach(line IN LISTS bna_zoo_lines)
  if(line STREQUAL "")
    continue()
  endif()
  separate_arguments(fields UNIX_COMMAND "${line}")
  list(GET fields 0 kind)
  list(GET fields 1 saved)
  list(GET fields 2 tier)
  string(REPLACE "/" "_" slug "${kind}")
  set(name ${slug}_${saved})
  set(labels zoo)
  if(tier STREQUAL "long")
    list(APPEND labels long)
  endif()
  add_test(NAME zoo_fixture_${name}
           COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/fixtures/make_zoo.py ${BNA_ZOO} ${kind} ${saved})
  set_tests_properties(zoo_fixture_${name} PROPERTIES FIXTURES_SETUP bna_zoo_${name}
                       TIMEOUT 300 LABELS "${labels}")
  set(model ${BNA_ZOO}/${name}.pt)
  set(data ${BNA_ZOO}/${name}_data.pt)
  if(tier STREQUAL "nobn")
    bna_expect_failure(zoo_${name} 2 4 "${name}.pt': LayerNorm x[0-9]+.*: no BatchNorm to adapt"
                       --model ${model} --data ${data} --samples 8 --batch-size 4 ${BNA_OUTS})
    set_property(TEST bad_zoo_${name} APPEND PROPERTY FIXTURES_REQUIRED bna_zoo_${name})
    set_property(TEST bad_zoo_${name} APPEND PROPERTY LABELS zoo)
    continue()
  endif()
  # One intra-op thread per rank at both world sizes: float32 convolutions round differently
  # with the thread count (up to 1.3e-5 on EfficientNet-B0, as the reference's own 1- vs
  # 2-thread forward shows), and the runs are compared with each other at 1e-6. mpirun's
  # default would give np 1 both cores (the binding is widened to the node share).
  set(dirs)
  foreach(np 1 2)
    set(dir ${BNA_RUNS}/zoo_${name}_np${np})
    list(APPEND dirs ${dir})
    bna_mpi_command(cmd ${np} --model ${model} --data ${data} --samples 12 --batch-size 4
                    --threads 1 --data-threads 1
                    --output ${dir}/out.pt --stats-output ${dir}/stats.pt --report ${dir}/report.json)
    add_test(NAME run_zoo_${name}_np${np} COMMAND ${BNA_SRC_TESTS}/mpi/run_case.sh ${dir} -- ${cmd})
    set_tests_properties(run_zoo_${name}_np${np} PROPERTIES FIXTURES_REQUIRED bna_zoo_${name}
                         FIXTURES_SETUP bna_zoo_runs_${name} ENVIRONMENT "${BNA_MPI_ENV}"
                         TIMEOUT 300 LABELS "${labels}")
  endforeach()
  add_test(NAME check_zoo_${name}
           COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/reference/check_outputs.py --kind ${kind}
                   --model ${model} --data ${data} --samples 12 --batch-size 4
                   --weighting samples --runs ${dirs})
  set_tests_properties(check_zoo_${name} PROPERTIES
                       FIXTURES_REQUIRED "bna_zoo_${name};bna_zoo_runs_${name}"
                       TIMEOUT 1200 LABELS "${labels}")
endforeach()
