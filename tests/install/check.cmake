# An install as a user makes it (cmake --install BUILD --prefix PREFIX),
# then, with no LD_LIBRARY_PATH: the installed loom runs (its RPATH finds
# libloom.so), and a program built with `pkg-config --cflags --libs loom`
# runs; with the static library installed, one built with `pkg-config
# --static` against libloom.a runs too and does not load libloom.so.
# -DBUILD -DPREFIX -DLIBDIR -DCC -DSOURCE [-DFLAGS: the build's sanitizer flags]
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
function(build_user name pkg_args)
  run("pkg-config ${pkg_args}" pkg-config --cflags ${pkg_args} --libs loom)
  string(STRIP "${out}" flags)
  if(name STREQUAL "user_static")
    string(REPLACE "-lloom" "-l:libloom.a" flags "${flags}")
  endif()
  separate_arguments(flags UNIX_COMMAND "${flags}")
  run("building ${name} with ${flags}" ${CC} ${extra} ${SOURCE} -o ${PREFIX}/work/${name} ${flags})
  file(MAKE_DIRECTORY ${PREFIX}/work/${name}.d)
  run("the user's program ${name}" ${PREFIX}/work/${name} ${PREFIX}/work/${name}.d)
  if(NOT out MATCHES "user: loom [0-9.]+ trained 2 epochs")
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
