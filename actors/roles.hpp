#pragma once
// Every worker role by name: the RL roles (env_actor, policy_worker, trainer, buffer) and the RLHF
// roles (actor, rollout, ref, critic, reward, and colocated, which hosts several). A user's role
// registers itself with a RoleRegistration from its own source file.
#include "core/registry.hpp"
#include "runtime/worker.hpp"

namespace flotilla::actors {

core::Registry<runtime::RoleFactory>& roles();

struct RoleRegistration {
  RoleRegistration(const std::string& name, runtime::RoleFactory factory) { roles().add(name, std::move(factory)); }
};

}  // namespace flotilla::actors
