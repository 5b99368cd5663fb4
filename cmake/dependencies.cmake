# Every third-party library Flotilla uses, found once. scripts/setup installs them from Debian.
find_package(Torch REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(spdlog REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(CLI11 REQUIRED)
find_package(cppzmq REQUIRED)      # ZeroMQ, for the distributed runtime
find_package(CapnProto REQUIRED)   # message schemas of the distributed runtime
find_package(Boost 1.74 REQUIRED)
find_package(Protobuf REQUIRED)
find_package(doctest REQUIRED)
find_package(Threads REQUIRED)
find_package(OpenSSL REQUIRED)     # SHA-256 of checkpoint files (libcrypto)
# Tokenizers: Oniguruma for the pre-tokenizer regexes (as Hugging Face's tokenizers use it) and
# utf8proc for Unicode normalization (NFC) and UTF-8 checks.
find_package(PkgConfig REQUIRED)
pkg_check_modules(ONIGURUMA REQUIRED IMPORTED_TARGET oniguruma)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)
# libsodium: the cipher under ZeroMQ's CURVE, which `bench stream` times on its own.
pkg_check_modules(SODIUM REQUIRED IMPORTED_TARGET libsodium)

# Python bindings (python/): pybind11 with the system's Python 3. /usr/bin/python3 is preferred: a
# pyenv shim earlier on PATH does not see Debian's python3-* packages (NumPy). Off by default in
# the sanitizer and fuzz builds (an ASan extension module needs the runtime preloaded).
if(FLOTILLA_SANITIZE OR FLOTILLA_FUZZ)
  set(_flotilla_python_default OFF)
else()
  set(_flotilla_python_default AUTO)
endif()
set(FLOTILLA_PYTHON ${_flotilla_python_default} CACHE STRING "Build the Python package: AUTO (when pybind11 is found), ON or OFF")
set_property(CACHE FLOTILLA_PYTHON PROPERTY STRINGS AUTO ON OFF)
if(NOT FLOTILLA_PYTHON STREQUAL "OFF")
  if(NOT DEFINED PYTHON_EXECUTABLE AND EXISTS /usr/bin/python3)
    set(PYTHON_EXECUTABLE /usr/bin/python3)
  endif()
  if(FLOTILLA_PYTHON STREQUAL "ON")
    find_package(pybind11 CONFIG REQUIRED)
  else()
    find_package(pybind11 CONFIG QUIET)
  endif()
endif()

# Debian's libtorch exports its flags (the C++11 ABI define) through TORCH_CXX_FLAGS only.
add_library(flotilla_torch INTERFACE)
target_link_libraries(flotilla_torch INTERFACE ${TORCH_LIBRARIES})
separate_arguments(_flotilla_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
target_compile_options(flotilla_torch INTERFACE ${_flotilla_torch_flags})
