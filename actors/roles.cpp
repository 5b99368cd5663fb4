#include "actors/roles.hpp"

namespace flotilla::actors {

namespace rl {
void add_roles(core::Registry<runtime::RoleFactory>& roles);  // actors/rl/*.cpp
}
namespace lm {
void add_roles(core::Registry<runtime::RoleFactory>& roles);  // actors/lm/worker.cpp
}

core::Registry<runtime::RoleFactory>& roles() {
  static core::Registry<runtime::RoleFactory> r("worker role", [](auto& r) {
    rl::add_roles(r);
    lm::add_roles(r);
  });
  return r;
}

}  // namespace flotilla::actors
