#pragma once
// Every name-service key Flotilla uses is formed here, so workers and the controller agree on
// them and a reader can see the whole key space in one place.
#include <string>

namespace flotilla::core::names {

// All keys of one run live under flotilla/<experiment>/<trial>/.
inline std::string run_root(const std::string& experiment, const std::string& trial) {
  return "flotilla/" + experiment + "/" + trial;
}
// Where a worker answers RPC (its ROUTER endpoint).
inline std::string worker_rpc(const std::string& experiment, const std::string& trial, const std::string& role, int rank) {
  return run_root(experiment, trial) + "/workers/" + role + "/" + std::to_string(rank) + "/rpc";
}
// Where a stream's receiving side listens (e.g. "samples/trainer/0", "inference/policy/0").
inline std::string stream_endpoint(const std::string& experiment, const std::string& trial, const std::string& stream) {
  return run_root(experiment, trial) + "/streams/" + stream;
}
// The controller's endpoints for heartbeats and metrics.
inline std::string controller(const std::string& experiment, const std::string& trial, const std::string& what) {
  return run_root(experiment, trial) + "/controller/" + what;
}

}  // namespace flotilla::core::names
