// The headers that most translation units parse, compiled once per library (CMake's precompiled
// headers, see flotilla_layer in cmake/layers.cmake): ATen alone is about 13 s of parsing for each
// file that includes it on a 2-core machine. Only system libraries here, never project headers,
// so that editing Flotilla's own code never rebuilds a precompiled header.
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
