# The checkers (docs/reliability.md, "Checkers"): ThreadSanitizer over the
# threaded tests (label tsan, in a -DLOOM_TSAN=ON build).

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
endif()
