# mpirun -np 2 loom run CONFIG --check, rank 0 with logdir OUT/rank0 and
# rank 1 with OUT/rank1 (MPMD: one command line per rank): the run must
# succeed, rank 0's logdir hold the config, metrics and checkpoints, and
# rank 1's not exist (only the master writes).
file(REMOVE_RECURSE ${OUT})
execute_process(COMMAND ${MPIEXEC} -n 1 ${LOOM} run ${CONFIG} --check --logdir ${OUT}/rank0
                        : -n 1 ${LOOM} run ${CONFIG} --check --logdir ${OUT}/rank1
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "mpirun loom run exited with ${rc}\n${out}\n${err}")
endif()
foreach(f config.json metrics.jsonl checkpoints/last.h5)
  if(NOT EXISTS ${OUT}/rank0/${f})
    message(FATAL_ERROR "rank 0 did not write ${OUT}/rank0/${f}")
  endif()
endforeach()
if(EXISTS ${OUT}/rank1)
  message(FATAL_ERROR "rank 1 wrote into its logdir ${OUT}/rank1: only the master may write")
endif()
# The resolved config records how the ranks were chosen.
file(READ ${OUT}/rank0/config.json resolved)
if(NOT resolved MATCHES "\"distributed\": \"auto\"")
  message(FATAL_ERROR "the resolved config does not say \"distributed\": \"auto\"")
endif()
message(STATUS "rank 0 wrote ${OUT}/rank0; rank 1 wrote nothing")
