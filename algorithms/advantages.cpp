#include "algorithms/advantages.hpp"

#include <ATen/ATen.h>

#include "core/config.hpp"
#include "core/error.hpp"
#include "kernels/gae.hpp"

namespace flotilla::algorithms {

#if FLOTILLA_WITH_CUDA
void gae_on_gpu(const kernels::GaeArgs& args);  // algorithms/advantages_cuda.cu
#endif

std::vector<std::string> advantage_names() { return {"gae"}; }

Advantages estimate_advantages(const std::string& name, const Rollout& r, double gamma, double lambda) {
  if (name != "gae") {
    std::string hint = core::closest_match(name, advantage_names());
    throw ConfigError("unknown advantage estimator '" + name + "' (known: gae)" +
                      (hint.empty() ? "" : "; did you mean '" + hint + "'?"));
  }
  Advantages out{at::empty_like(r.reward), at::empty_like(r.reward)};
  at::Tensor reward = r.reward.contiguous(), value = r.value.contiguous(), next = r.next_value.contiguous();
  at::Tensor term = r.terminated.contiguous(), done = r.done.contiguous();
  kernels::GaeArgs a;
  a.steps = reward.size(0);
  a.envs = reward.size(1);
  a.reward = reward.data_ptr<float>();
  a.value = value.data_ptr<float>();
  a.next_value = next.data_ptr<float>();
  a.terminated = term.data_ptr<bool>();
  a.done = done.data_ptr<bool>();
  a.gamma = static_cast<float>(gamma);
  a.lambda = static_cast<float>(lambda);
  a.advantage = out.advantage.data_ptr<float>();
  a.ret = out.ret.data_ptr<float>();
  if (reward.is_cuda()) {
#if FLOTILLA_WITH_CUDA
    gae_on_gpu(a);
#else
    throw Error("GAE on a CUDA tensor needs a build with CUDA");
#endif
  } else {
    kernels::gae_cpu(a);
  }
  return out;
}

}  // namespace flotilla::algorithms
