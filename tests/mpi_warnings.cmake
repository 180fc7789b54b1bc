# mpirun -np 2 loom run CONFIG with OpenBLAS made to pick its generic
# kernels (a notice on every rank): rank 1 prints the notice as a warning
# prefixed "[rank 1]" and nothing else, while rank 0 (the config has no
# console logger) prints nothing: other ranks print only warnings and
# errors, saying whose (docs/distributed.md).
file(REMOVE_RECURSE ${OUT})
execute_process(COMMAND ${MPIEXEC} -x OPENBLAS_CORETYPE=Prescott -x LIBXSMM_TARGET=hsw -n 2
                        ${LOOM} run ${CONFIG} --logdir ${OUT}/run
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "mpirun loom run exited with ${rc}\n${out}\n${err}")
endif()
# (a ";" would split CMake's list of lines)
string(REPLACE ";" "," text "${out}\n${err}")
string(REGEX MATCHALL "[^\n]+" lines "${text}")
set(warned FALSE)
foreach(line ${lines})
  if(line MATCHES "^\\[rank 1\\] warning: OpenBLAS runs its generic")
    set(warned TRUE)
  elseif(NOT line MATCHES "^\\[rank 1\\] warning: ")
    message(FATAL_ERROR "a line that is no rank 1 warning: \"${line}\"\n${out}\n${err}")
  endif()
endforeach()
if(NOT warned)
  message(FATAL_ERROR "rank 1 did not print OpenBLAS's notice as \"[rank 1] warning: ...\"\n${out}\n${err}")
endif()
message(STATUS "rank 1 printed its warning, prefixed; nothing else was printed")
