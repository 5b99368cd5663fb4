# One static library per layer. The include direction of ARCHITECTURE.md is enforced by what each
# layer can see: its include root holds links to its own folder and to the folders above it only,
# so `#include "actors/..."` from envs/ fails to compile.
set(FLOTILLA_LAYERS core kernels envs models algorithms actors controller)

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
  add_library(flotilla_${name} STATIC ${ARG_SOURCES})
  target_include_directories(flotilla_${name} PUBLIC ${view})
  target_link_libraries(flotilla_${name} PUBLIC ${ARG_LINK})
endfunction()
