# Many ranks (real mpiexec, oversubscribed on this 2-core machine): a tiny model and 10
# batches of 4 samples at np = 1, 8 and 16 (at np = 16, six ranks get no batch and still take
# part) give byte-identical statistics files. Label "scale"; np = 16 takes ~20 s here.
set(BNA_SCALE ${BNA_RUNS}/scale)
set(scale_stats)
foreach(np 1 8 16)
  set(dir ${BNA_SCALE}/np${np})
  list(APPEND scale_stats ${dir}/stats.pt)
  bna_mpi_case(scale_np${np} ${np} ${dir} bna_scale 180 "mpi;scale"
               --model ${BNA_FIX}/mlp_scripted.pt --data ${BNA_FIX}/data_vec48.pt
               --samples 40 --batch-size 4 --threads 1 --data-threads 1
               --stats-output ${dir}/stats.pt --report ${dir}/report.json)
endforeach()
list(GET scale_stats 0 scale_np1)
foreach(np 8 16)
  add_test(NAME scale_np${np}_equals_np1
           COMMAND ${CMAKE_COMMAND} -E compare_files ${scale_np1} ${BNA_SCALE}/np${np}/stats.pt)
  set_tests_properties(scale_np${np}_equals_np1 PROPERTIES FIXTURES_REQUIRED bna_scale
                       LABELS "mpi;scale")
endforeach()
