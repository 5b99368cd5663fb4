// Must compile with controller's include view: controller/ may include every layer above it.
#include "core/error.hpp"
