#include "actors/roles.hpp"

namespace flotilla::actors {

namespace rl {
void add_roles(core::Registry<runtime::RoleFactory>& roles);  // actors/rl/*.cpp
}
namespace lm {
void add_roles(core::Registry<runtime::RoleFactory>& roles);  // actors/lm/worker.cpp
}
namespace weights {
void add_roles(core::Registry<runtime::RoleFactory>& roles);  // actors/weights/bench_role.cpp
}

core::Registry<runtime::RoleFactory>& roles() {
  static core::Registry<runtime::RoleFactory> r("worker role", [](auto& r) {
    rl::add_roles(r);
    lm::add_roles(r);
    weights::add_roles(r);
  });
  return r;
}

}  // namespace flotilla::actors
