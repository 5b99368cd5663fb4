// flotilla._flotilla: the batched environments for Python. The Python package (python/flotilla)
// wraps these classes in Gymnasium's VectorEnv interface and PettingZoo's Parallel API.
//
// Arrays handed to Python are NumPy views of the env's own output tensors, which the env
// allocates once and overwrites at every step: no copy per step. The views are read-only (a write
// would change the env's state behind its back) and keep the env object alive.
#include <ATen/ATen.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <memory>
#include <string>
#include <type_traits>

#include "core/config.hpp"
#include "core/error.hpp"
#include "envs/multi_agent.hpp"
#include "envs/registry.hpp"

namespace py = pybind11;

namespace flotilla::python {
namespace {

py::dtype numpy_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return py::dtype::of<float>();
    case at::kDouble: return py::dtype::of<double>();
    case at::kBool: return py::dtype::of<bool>();
    case at::kInt: return py::dtype::of<int32_t>();
    case at::kLong: return py::dtype::of<int64_t>();
    case at::kByte: return py::dtype::of<uint8_t>();
    default: throw Error(std::string("no NumPy dtype for ") + c10::toString(type));
  }
}

// A read-only NumPy array over `t`'s memory; `owner` keeps that memory alive.
py::array view(const at::Tensor& t, py::handle owner) {
  std::vector<py::ssize_t> shape(t.sizes().begin(), t.sizes().end()), strides;
  for (int64_t s : t.strides()) strides.push_back(s * static_cast<py::ssize_t>(t.element_size()));
  py::array a(numpy_dtype(t.scalar_type()), shape, strides, t.data_ptr(), owner);
  py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return a;
}

py::dict space_dict(const envs::Space& s) {
  py::dict d;
  d["kind"] = s.kind == envs::Space::Kind::Box ? "Box" : s.kind == envs::Space::Kind::Discrete ? "Discrete" : "MultiDiscrete";
  d["shape"] = py::tuple(py::cast(s.shape));
  d["dtype"] = s.dtype;
  d["low"] = s.low;
  d["high"] = s.high;
  d["n"] = s.n;
  d["nvec"] = s.nvec;
  d["text"] = s.str();
  return d;
}

// The env's parameters (PettingZoo-style scenario sizes, ...) from the JSON text of a Python
// dict; a key the env does not read is a ConfigError naming it.
core::Config params_config(const std::string& json) {
  return core::Config(core::ConfigTree::load_string(json.empty() ? "{}" : json, "params"));
}

envs::EnvOptions options(int64_t num_envs, int threads, int32_t max_episode_steps, const std::string& backend) {
  envs::EnvOptions o;
  o.num_envs = num_envs;
  o.threads = threads;
  o.max_episode_steps = max_episode_steps;
  o.backend = backend;
  if (num_envs < 1) throw ConfigError("num_envs must be at least 1, got " + std::to_string(num_envs));
  if (threads < 1 || threads > 256) throw ConfigError("threads must be in 1..256, got " + std::to_string(threads));
  if (max_episode_steps < 0) throw ConfigError("max_episode_steps must be 0 (the env's own) or more, got " + std::to_string(max_episode_steps));
  if (backend != "cpu" && backend != "cuda") throw ConfigError("backend must be 'cpu' or 'cuda', got '" + backend + "'");
  return o;
}

// The actions of one step as a tensor over the array's memory (converted first when its dtype
// is another of the same kind). Integer spaces take integers only: 1.7 is not an action.
at::Tensor actions_tensor(const std::string& env_id, const py::handle& actions, bool discrete, py::object& keep) {
  py::array a = py::array::ensure(actions);
  if (!a) throw py::type_error(env_id + ": actions must be a NumPy array (or convertible to one)");
  const char kind = a.dtype().kind();
  if (discrete) {
    if (kind != 'i' && kind != 'u')
      throw py::type_error(env_id + ": actions must be integers, got dtype " + py::str(a.dtype()).cast<std::string>());
    keep = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
  } else {
    if (kind != 'f' && kind != 'i' && kind != 'u')
      throw py::type_error(env_id + ": actions must be numbers, got dtype " + py::str(a.dtype()).cast<std::string>());
    keep = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
  }
  py::array c = keep.cast<py::array>();
  std::vector<int64_t> shape(c.shape(), c.shape() + c.ndim());
  return at::from_blob(const_cast<void*>(c.data()), shape, discrete ? at::kLong : at::kFloat);
}

// Runs `step` without the GIL (threaded envs step in parallel with Python) and turns the env's
// complaint about an action (its shape, dtype or value, with the env index) into a ValueError.
template <class F>
void step_without_gil(F&& step) {
  try {
    py::gil_scoped_release unlocked;
    step();
  } catch (const ConfigError&) {
    throw;
  } catch (const Error& e) {
    throw py::value_error(e.what());
  }
}

// A batch of `Env` (VecEnv or MultiAgentVecEnv) made from Python's arguments.
template <class Env>
struct Batch {
  Batch(const std::string& id, int64_t num_envs, int threads, int32_t max_episode_steps, const std::string& params_json,
        const std::string& backend) {
    core::Config params = params_config(params_json);
    core::ConfigView view = params.root();
    const envs::EnvOptions o = options(num_envs, threads, max_episode_steps, backend);
    if constexpr (std::is_same_v<Env, envs::VecEnv>) {
      envs::env_spec(id);  // an unknown id: a ConfigError listing the known ones
      env = envs::make_env(id, o, &view);
    } else {
      envs::multi_agent_spec(id);
      env = envs::make_multi_agent_env(id, o, &view);
    }
    params.check_unknown_keys();
  }
  bool discrete() const {
    if constexpr (std::is_same_v<Env, envs::VecEnv>) return env->spec().action_space.is_discrete();
    else return env->spec().discrete();
  }
  // The spec fields both batch kinds have; each adds its spaces.
  py::dict spec() const {
    py::dict d;
    d["id"] = env->spec().id;
    d["max_episode_steps"] = env->max_episode_steps();
    d["backend"] = env->backend();
    return d;
  }
  std::unique_ptr<Env> env;
};
using VecEnv = Batch<envs::VecEnv>;
using MultiAgentVecEnv = Batch<envs::MultiAgentVecEnv>;

// Read-only views of the named output tensors, kept alive by `owner`.
py::dict views(py::handle owner, std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  py::dict d;
  for (const auto& [name, t] : tensors) d[name] = view(*t, owner);
  return d;
}

// What the two batch kinds share on the Python side: construction, reset and step.
template <class B>
py::class_<B> bind_batch(py::module_& m, const char* name) {
  return py::class_<B>(m, name)
      .def(py::init<const std::string&, int64_t, int, int32_t, const std::string&, const std::string&>(), py::arg("env_id"),
           py::arg("num_envs"), py::arg("threads"), py::arg("max_episode_steps"), py::arg("params_json"), py::arg("backend"))
      .def("reset", [](B& e, uint64_t seed) { step_without_gil([&] { e.env->reset(seed); }); })
      .def("step", [](B& e, const py::handle& actions) {
        py::object keep;
        at::Tensor a = actions_tensor(e.env->spec().id, actions, e.discrete(), keep);
        step_without_gil([&] { e.env->step(a); });
      });
}

// The C++ side of `python -m flotilla.bench`: batch steps a second with random valid actions
// drawn before the clock starts, timed the way `flotilla bench env` times them.
double cpp_steps_per_second(VecEnv& e, const py::list& action_batches, double seconds) {
  std::vector<at::Tensor> batches;
  std::vector<py::object> keep(action_batches.size());
  for (size_t i = 0; i < action_batches.size(); ++i)
    batches.push_back(actions_tensor(e.env->spec().id, action_batches[i], e.discrete(), keep[i]));
  py::gil_scoped_release unlocked;
  using clock = std::chrono::steady_clock;
  int64_t steps = 0;
  const auto start = clock::now();
  double elapsed = 0;
  do {
    for (int i = 0; i < 64; ++i, ++steps) e.env->step(batches[steps % batches.size()]);
    elapsed = std::chrono::duration<double>(clock::now() - start).count();
  } while (elapsed < seconds);
  return static_cast<double>(steps * e.env->num_envs()) / elapsed;
}

}  // namespace
}  // namespace flotilla::python

PYBIND11_MODULE(_flotilla, m) {
  using namespace flotilla;
  using namespace flotilla::python;
  m.doc() = "Flotilla's batched environments (use the flotilla package, not this module)";
  py::register_exception<ConfigError>(m, "ConfigError", PyExc_ValueError);

  m.def("env_ids", [] {
    py::list out;
    for (const auto& s : envs::env_specs()) out.append(py::make_tuple(s.id, envs::is_multi_agent(s.id), s.summary));
    return out;
  });

  bind_batch<python::VecEnv>(m, "VecEnv")
      .def("spec",
           [](const python::VecEnv& e) {
             const envs::EnvSpec& s = e.env->spec();
             py::dict d = e.spec();
             d["observation_space"] = space_dict(s.observation_space);
             d["action_space"] = space_dict(s.action_space);
             return d;
           })
      .def("arrays",
           [](py::object self) {
             const envs::VecEnv& env = *self.cast<python::VecEnv&>().env;
             return views(self, {{"obs", &env.obs()},
                                 {"reward", &env.reward()},
                                 {"terminated", &env.terminated()},
                                 {"truncated", &env.truncated()},
                                 {"final_obs", &env.final_obs()},
                                 {"episode_return", &env.episode_return()},
                                 {"episode_length", &env.episode_length()}});
           })
      .def("cpp_steps_per_second", &cpp_steps_per_second);

  bind_batch<python::MultiAgentVecEnv>(m, "MultiAgentVecEnv")
      .def("spec",
           [](const python::MultiAgentVecEnv& e) {
             const envs::MultiAgentSpec& s = e.env->spec();
             py::dict d = e.spec();
             py::list agents;
             for (const auto& a : s.agents) {
               py::dict agent;
               agent["name"] = a.name;
               agent["observation_space"] = space_dict(a.observation);
               agent["action_space"] = space_dict(a.action);
               agents.append(agent);
             }
             d["agents"] = agents;
             d["state_space"] = space_dict(s.state);
             d["discrete"] = s.discrete();
             d["has_outcome"] = s.has_outcome;
             return d;
           })
      .def("arrays", [](py::object self) {
        const envs::MultiAgentVecEnv& env = *self.cast<python::MultiAgentVecEnv&>().env;
        return views(self, {{"obs", &env.obs()},
                            {"action_mask", &env.avail_actions()},
                            {"state", &env.global_state()},
                            {"reward", &env.reward()},
                            {"agent_done", &env.agent_done()},
                            {"terminated", &env.terminated()},
                            {"truncated", &env.truncated()},
                            {"final_obs", &env.final_obs()},
                            {"final_action_mask", &env.final_avail_actions()},
                            {"final_state", &env.final_global_state()},
                            {"episode_return", &env.episode_return()},
                            {"episode_length", &env.episode_length()},
                            {"won", &env.won()}});
      });
}
