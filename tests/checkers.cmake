# The checkers (docs/reliability.md, "Checkers"): ThreadSanitizer over the
# threaded tests (label tsan, in a -DLOOM_TSAN=ON build) and Valgrind's
# memcheck over a representative subset (label valgrind, in a plain build).

if(LOOM_TSAN)
  # The compute pool (every layer's pass, the products cut into parts), the
  # loader workers (test_pipeline runs 1, 2, 3 and 4 of them) and the
  # optimizers' parallel updates, with the pool at 1, 2 and 4 threads.
  # OpenBLAS stays single-threaded: its own threads synchronise in code TSan
  # does not see (the pool hands it one part per thread anyway).
  foreach(t test_pipeline test_layers test_fusions test_gemm test_optimizers)
    foreach(n 1 2 4)
      add_test(NAME tsan_${t}_${n} COMMAND ${t})
      set_tests_properties(tsan_${t}_${n} PROPERTIES LABELS tsan TIMEOUT 600 ENVIRONMENT
        "LOOM_NUM_THREADS=${n};OPENBLAS_NUM_THREADS=1;TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=${CMAKE_CURRENT_SOURCE_DIR}/tsan.supp")
    endforeach()
  endforeach()
  # Its 45000-sample HDF5 pass adds minutes under TSan and no threading the
  # other pipeline tests lack (CI keeps the whole run within its budget).
  foreach(n 1 2 4)
    set_property(TEST tsan_test_pipeline_${n} APPEND PROPERTY ENVIRONMENT LOOM_TEST_SKIP=test_hdf5_larger_than_cache)
  endforeach()
endif()

find_program(LOOM_VALGRIND valgrind)
if(LOOM_VALGRIND AND NOT LOOM_SANITIZE AND NOT LOOM_TSAN AND NOT LOOM_FUZZ)
  # Any error (an invalid access, a use of uninitialised memory, a leak)
  # fails the test. Forked children (test_resume's signalled runs) are
  # checked too but print nothing: their exit status says whether they were
  # clean. The pool at 2 threads, OpenBLAS at one (its threads are not ours).
  set(vg ${LOOM_VALGRIND} --tool=memcheck --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect,possible
      --errors-for-leak-kinds=definite,indirect,possible --child-silent-after-fork=yes --num-callers=40
      --suppressions=${CMAKE_CURRENT_SOURCE_DIR}/valgrind.supp)
  set(configs ${CMAKE_CURRENT_SOURCE_DIR}/configs)
  add_test(NAME valgrind_test_loop COMMAND ${vg} $<TARGET_FILE:test_loop>)
  add_test(NAME valgrind_test_resume COMMAND ${vg} $<TARGET_FILE:test_resume>)
  add_test(NAME valgrind_test_pipeline COMMAND ${vg} $<TARGET_FILE:test_pipeline>)
  add_test(NAME valgrind_test_configs COMMAND ${vg} $<TARGET_FILE:test_configs> ${configs}/invalid)
  add_test(NAME valgrind_test_config_run COMMAND ${vg} $<TARGET_FILE:test_config_run> ${configs})
  foreach(t test_loop test_resume test_pipeline test_configs test_config_run)
    set_tests_properties(valgrind_${t} PROPERTIES LABELS valgrind TIMEOUT 600
                         ENVIRONMENT "LOOM_NUM_THREADS=2;OPENBLAS_NUM_THREADS=1")
  endforeach()
  # Its 45000-sample HDF5 pass alone takes minutes under valgrind.
  set_property(TEST valgrind_test_pipeline APPEND PROPERTY ENVIRONMENT LOOM_TEST_SKIP=test_hdf5_larger_than_cache)
endif()
