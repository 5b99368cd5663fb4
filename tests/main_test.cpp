#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdlib>

int main(int argc, char** argv) {
  // OpenBLAS picks its sgemm kernels by CPU, and they round differently (its Haswell kernels and
  // its AVX-512 ones part in the last bits, which can flip a sampled token or a clip decision).
  // The CLI tests compare runs with stored numbers (tests/data/), so the programs they start use
  // the Haswell kernels on every x86-64 machine that can run them. A caller's own choice is kept.
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ::setenv("OPENBLAS_CORETYPE", "Haswell", 0);
#endif
  return doctest::Context(argc, argv).run();
}
