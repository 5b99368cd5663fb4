# One static library per layer. The include direction of ARCHITECTURE.md is enforced by what each
# layer can see: its include root holds links to its own folder and to the folders above it only,
# so `#include "actors/..."` from envs/ fails to compile.
set(FLOTILLA_LAYERS core kernels envs models algorithms runtime actors controller)

# Precompiled libtorch and JSON headers for a target's C++ files (cmake/precompiled.hpp); files
# compiled with flags of their own (fast math) skip them.
option(FLOTILLA_PCH "Precompile the libtorch and JSON headers once per library" ON)
function(flotilla_precompile target)
  if(FLOTILLA_PCH)
    target_precompile_headers(${target} PRIVATE "$<$<COMPILE_LANGUAGE:CXX>:${CMAKE_SOURCE_DIR}/cmake/precompiled.hpp>")
  endif()
endfunction()

function(flotilla_layer name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LINK" ${ARGN})
  set(view ${CMAKE_BINARY_DIR}/layer_include/${name})
  file(MAKE_DIRECTORY ${view})
  foreach(layer IN LISTS FLOTILLA_LAYERS)
    if(EXISTS ${CMAKE_SOURCE_DIR}/${layer} AND NOT EXISTS ${view}/${layer})
      file(CREATE_LINK ${CMAKE_SOURCE_DIR}/${layer} ${view}/${layer} SYMBOLIC)
    endif()
    if(layer STREQUAL name)
      break()
    endif()
  endforeach()
  if(ARG_SOURCES)
    add_library(flotilla_${name} STATIC ${ARG_SOURCES})
    target_include_directories(flotilla_${name} PUBLIC ${view})
    target_link_libraries(flotilla_${name} PUBLIC ${ARG_LINK})
    flotilla_precompile(flotilla_${name})
  else()  # headers only
    add_library(flotilla_${name} INTERFACE)
    target_include_directories(flotilla_${name} INTERFACE ${view})
    target_link_libraries(flotilla_${name} INTERFACE ${ARG_LINK})
  endif()
endfunction()

# Flags for the translation units that instantiate environment steps (kernels/env_batch.hpp):
# fast math makes glibc declare its SIMD sin/cos (libmvec), and keeping sin and cos of one angle
# as two calls (no sincos fusion) lets both vectorize. Results stay within a few ulp of scalar libm.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  set(FLOTILLA_ENV_CXX_FLAGS -O3 -ffast-math -fdisable-tree-sincos)
else()
  set(FLOTILLA_ENV_CXX_FLAGS -O3 -ffast-math)
endif()
