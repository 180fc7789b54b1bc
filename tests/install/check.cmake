# An install as a user makes it (cmake --install BUILD --prefix PREFIX),
# then, with no LD_LIBRARY_PATH: the installed loom runs (its RPATH finds
# libloom.so), and a program built with `pkg-config --cflags --libs loom`
# runs; with the static library installed, one built with `pkg-config
# --static` against libloom.a runs too and does not load libloom.so.
# With the CUDA module (-DCUDA_MODULE=its file name), it is installed next
# to libloom.so, which links no CUDA library, and the user's program gets
# the module's answer (a backend, or what the machine lacks); the static one
# is told where the module is (LOOM_CUDA_MODULE): its libloom is the program.
# -DBUILD -DPREFIX -DLIBDIR -DCC -DSOURCE [-DFLAGS: the build's sanitizer flags] [-DCUDA_MODULE]
file(REMOVE_RECURSE ${PREFIX})
file(MAKE_DIRECTORY ${PREFIX}/work)

function(run what)
  execute_process(COMMAND env -u LD_LIBRARY_PATH ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(out "${out}" PARENT_SCOPE)
endfunction()

run("cmake --install" ${CMAKE_COMMAND} --install ${BUILD} --prefix ${PREFIX})
run("the installed loom --help" ${PREFIX}/bin/loom --help)
if(NOT out MATCHES "usage: loom COMMAND")
  message(FATAL_ERROR "the installed loom --help printed:\n${out}")
endif()

set(ENV{PKG_CONFIG_PATH} ${PREFIX}/${LIBDIR}/pkgconfig)
separate_arguments(extra UNIX_COMMAND "${FLAGS}")
if(CUDA_MODULE)
  set(cuda_answer "user: cuda: (a backend on device 0|no usable CUDA driver|no CUDA device|CUDA device 0 .* compute capability)")
  if(NOT EXISTS ${PREFIX}/${LIBDIR}/${CUDA_MODULE})
    message(FATAL_ERROR "the CUDA module is not installed next to libloom: no ${PREFIX}/${LIBDIR}/${CUDA_MODULE}")
  endif()
  run("readelf" readelf -d ${PREFIX}/${LIBDIR}/libloom.so)
  if(out MATCHES "NEEDED[^\n]*lib(cudart|cublas)")
    message(FATAL_ERROR "the installed libloom.so links CUDA's libraries:\n${out}")
  endif()
else()
  set(cuda_answer "user: cuda: CUDA backend: this loom was built without CUDA support")
endif()

function(build_user name pkg_args)
  run("pkg-config ${pkg_args}" pkg-config --cflags ${pkg_args} --libs loom)
  string(STRIP "${out}" flags)
  if(name STREQUAL "user_static")
    string(REPLACE "-lloom" "-l:libloom.a" flags "${flags}")
  endif()
  separate_arguments(flags UNIX_COMMAND "${flags}")
  run("building ${name} with ${flags}" ${CC} ${extra} ${SOURCE} -o ${PREFIX}/work/${name} ${flags})
  file(MAKE_DIRECTORY ${PREFIX}/work/${name}.d)
  set(env "")
  if(CUDA_MODULE AND name STREQUAL "user_static")
    set(env LOOM_CUDA_MODULE=${PREFIX}/${LIBDIR}/${CUDA_MODULE})
  endif()
  run("the user's program ${name}" ${env} ${PREFIX}/work/${name} ${PREFIX}/work/${name}.d)
  if(NOT out MATCHES "user: loom [0-9.]+ trained 2 epochs" OR NOT out MATCHES "${cuda_answer}")
    message(FATAL_ERROR "${name} printed:\n${out}")
  endif()
endfunction()

build_user(user "")
if(EXISTS ${PREFIX}/${LIBDIR}/libloom.a)
  build_user(user_static "--static")
  run("readelf" readelf -d ${PREFIX}/work/user_static)
  if(out MATCHES "libloom\\.so")
    message(FATAL_ERROR "user_static needs libloom.so:\n${out}")
  endif()
endif()
message(STATUS "installed loom and the user's programs run without LD_LIBRARY_PATH")
