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

core::Batch training_batch(const Fragment& f, const std::string& advantage, double gamma, double lambda) {
  const int64_t T = f.reward.size(0), n = f.reward.size(1);
  at::Tensor next = at::cat({f.value.narrow(0, 1, T - 1), f.bootstrap_value.unsqueeze(0)});
  next = at::where(f.truncated & ~f.terminated, f.final_value, next);
  Rollout r{f.reward, f.value, next, f.terminated, f.terminated | f.truncated};
  Advantages adv = estimate_advantages(advantage, r, gamma, lambda);
  core::Batch b;
  b.set("obs", f.obs.reshape({T * n, -1}));
  b.set("action", f.action.dim() == 2 ? f.action.reshape({T * n}) : f.action.reshape({T * n, f.action.size(2)}));
  b.set("log_prob", f.log_prob.reshape({T * n}));
  b.set("value", f.value.reshape({T * n}));
  b.set("advantage", adv.advantage.reshape({T * n}));
  b.set("return", adv.ret.reshape({T * n}));
  return b;
}

}  // namespace flotilla::algorithms
