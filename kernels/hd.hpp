#pragma once
// FLOTILLA_HD marks code compiled for both the CPU and, under nvcc, the GPU: environment steps,
// random streams and scans are written once with it.
#if defined(__CUDACC__)
#define FLOTILLA_HD __host__ __device__ __forceinline__
#else
#define FLOTILLA_HD inline __attribute__((always_inline))
#endif
