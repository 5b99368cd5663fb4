#pragma once
// For tests that use libtorch: libtorch brings glog's CHECK macros, which would shadow doctest's.
// Include this after every libtorch header and instead of <doctest/doctest.h>.
#include <ATen/ATen.h>

#undef CHECK
#undef CHECK_EQ
#undef CHECK_NE
#undef CHECK_LT
#undef CHECK_LE
#undef CHECK_GT
#undef CHECK_GE
#include <doctest/doctest.h>
