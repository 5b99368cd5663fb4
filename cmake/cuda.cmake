# FLOTILLA_CUDA: AUTO compiles kernels/ for CUDA whenever a CUDA compiler is found, ON requires it,
# OFF never looks. Kernels are compiled here but run only on machines with a GPU.
set(FLOTILLA_WITH_CUDA OFF)
if(NOT FLOTILLA_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # Ampere and Hopper as real code, plus PTX for newer GPUs; no GPU here to detect "native".
      set(CMAKE_CUDA_ARCHITECTURES 80-real 90)
    endif()
    enable_language(CUDA)
    # CMake 3.25 has no C++20 flag for nvcc; the device code needs only C++17.
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(FLOTILLA_WITH_CUDA ON)
  elseif(FLOTILLA_CUDA STREQUAL "ON")
    message(FATAL_ERROR "FLOTILLA_CUDA=ON but no CUDA compiler was found "
                        "(install the CUDA toolkit or set CMAKE_CUDA_COMPILER)")
  endif()
endif()
message(STATUS "Flotilla CUDA kernels: ${FLOTILLA_WITH_CUDA} (FLOTILLA_CUDA=${FLOTILLA_CUDA})")
