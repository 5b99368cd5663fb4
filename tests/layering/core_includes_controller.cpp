// Must NOT compile with core's include view: core/ sits above controller/ in ARCHITECTURE.md.
#include "controller/run/program.hpp"
