# Device, backend and speed options on this CPU-only machine: the CUDA and NCCL choices fail
# with their documented messages; --channels-last and --autocast bf16 run and stay close to
# the float64 reference. (The GPU runs themselves are in launch/gpu_selftest.sh.)

bna_expect_failure(device_cuda_unavailable 2 2 "--device cuda.*(no CUDA|CUDA unavailable)"
                   ${BNA_GOOD} --device cuda ${BNA_OUTS})
bna_expect_failure(backend_nccl_on_cpu 2 2 "nccl"
                   ${BNA_GOOD} --backend nccl ${BNA_OUTS})

# bna_speed_option(<name> <precision> <flags>...): a resnet run at np = 2 with the flags,
# checked against the float64 reference with tolerances derived from the forward noise of the
# given precision (model: float32; bf16: autocast), see check_outputs.py.
function(bna_speed_option name precision)
  set(dir ${BNA_RUNS}/device/${name}_np2)
  bna_mpi_command(cmd 2 --model ${BNA_FIX}/resnet_scripted.pt --data ${BNA_FIX}/data_img32.pt
                  --samples 64 --batch-size 16 ${ARGN} --output ${dir}/out.pt
                  --stats-output ${dir}/stats.pt --report ${dir}/report.json)
  add_test(NAME device_run_${name} COMMAND ${BNA_SRC_TESTS}/mpi/run_case.sh ${dir} -- ${cmd})
  set_tests_properties(device_run_${name} PROPERTIES FIXTURES_REQUIRED bna_fixtures
                       FIXTURES_SETUP bna_device_${name} ENVIRONMENT "${BNA_MPI_ENV}"
                       TIMEOUT 180 LABELS mpi)
  add_test(NAME device_check_${name}
           COMMAND ${BNADAPT_PYTHON} ${BNA_SRC_TESTS}/reference/check_outputs.py --kind resnet
                   --model ${BNA_FIX}/resnet_scripted.pt --data ${BNA_FIX}/data_img32.pt
                   --samples 64 --batch-size 16 --weighting samples --precision ${precision}
                   --runs ${dir})
  set_tests_properties(device_check_${name} PROPERTIES
                       FIXTURES_REQUIRED "bna_fixtures;bna_device_${name}" TIMEOUT 300 LABELS mpi)
endfunction()

# channels-last: the same arithmetic in another layout, as exact as the default.
bna_speed_option(channels_last model --channels-last)
# bf16 autocast: activations keep ~3 significant digits, which compound over 20 BN layers;
# the bound is 4x the error of a Python bf16-autocast reference of the same batches (its noise
# envelope by depth), not a fixed number: how far bf16 lands depends on the CPU's kernels
# (native avx512_bf16 or emulated). Sums stay float64.
bna_speed_option(autocast_bf16 bf16 --autocast bf16)

# LibTorch 2.x warns once per process for deprecated calls (the per-device autocast switches,
# allowTF32*): the runs that use autocast and plain float32 must print no such warning.
set_property(TEST device_run_autocast_bf16 device_run_channels_last run_resnet_scripted_samples_np2
             PROPERTY FAIL_REGULAR_EXPRESSION "[Dd]eprecat|Warning: ")
