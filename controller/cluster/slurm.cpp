// The launcher config and the Slurm side of it: the allocation's nodes, where each worker runs,
// the job step that runs one, and the batch job that runs the controller.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "controller/cluster/launcher.hpp"
#include "core/config.hpp"
#include "core/error.hpp"

namespace flotilla::controller {
namespace fs = std::filesystem;
using namespace std::chrono_literals;

LauncherConfig LauncherConfig::read(const core::ConfigView& v) {
  LauncherConfig c;
  c.kind = v.choice("kind", "local", {"local", "slurm"});
  c.partition = v.get<std::string>("partition", "");
  c.account = v.get<std::string>("account", "");
  c.time = v.get<std::string>("time", "");
  c.nodes = v.get<int>("nodes", 1, core::in_range(1, 4096));
  c.sbatch_args = v.get<std::vector<std::string>>("sbatch_args", {});
  c.interface = v.get<std::string>("interface", "");
  c.start_timeout_s = v.get<double>("start_timeout_s", 120.0, core::greater_than(0.0));
  for (const core::ConfigView& g : v.list("groups")) {
    const std::string name = g.require<std::string>("group");
    if (c.groups.count(name)) g.fail("group", "group '" + name + "' is listed twice");
    Group& x = c.groups[name];
    x.cpus = g.get<int>("cpus", 1, core::in_range(1, 4096));
    x.gpus = g.get<int>("gpus", 0, core::in_range(0, 64));
    x.mem_mb = g.get<int>("mem_mb", 0, core::in_range(0, 1 << 24));
    x.placement = g.choice("placement", "spread", {"spread", "pack"});
  }
  return c;
}

LauncherConfig::Group LauncherConfig::group(const std::string& name) const {
  auto it = groups.find(name);
  return it == groups.end() ? Group{} : it->second;
}

namespace slurm {
namespace {

std::string run(const std::string& program, const std::vector<std::string>& args) {
  if (core::find_program(program).empty())
    throw Error(program + " is not on PATH: is this a Slurm login node (or run scripts/cluster up to try a local one)?");
  std::string out = core::run_with_input({program, args, program}, "", 60s);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

}  // namespace

std::vector<std::string> allocation_nodes() {
  const char* list = std::getenv("SLURM_JOB_NODELIST");
  if (!std::getenv("SLURM_JOB_ID") || !list)
    throw ConfigError("launcher.kind: slurm starts workers inside a Slurm allocation (SLURM_JOB_ID and SLURM_JOB_NODELIST are not set)");
  std::istringstream names(run("scontrol", {"show", "hostnames", list}));
  std::vector<std::string> nodes;
  for (std::string n; std::getline(names, n);)
    if (!n.empty()) nodes.push_back(n);
  if (nodes.empty()) throw Error("the allocation's node list '" + std::string(list) + "' names no node");
  return nodes;
}

std::map<std::string, std::vector<std::string>> place(const LauncherConfig& c, const std::vector<std::pair<std::string, int>>& counts,
                                                      const std::vector<std::string>& nodes) {
  std::map<std::string, std::vector<std::string>> out;
  size_t next = 0;
  for (const auto& [group, count] : counts) {
    auto& at = out[group];
    if (c.group(group).placement == "pack") {
      at.assign(static_cast<size_t>(count), nodes[next % nodes.size()]);
      ++next;
    } else {
      for (int r = 0; r < count; ++r) at.push_back(nodes[next++ % nodes.size()]);
    }
  }
  return out;
}

core::ProcessSpec worker_step(const LauncherConfig& c, const std::string& group, const std::string& node, const fs::path& log,
                              const core::ProcessSpec& program) {
  const LauncherConfig::Group g = c.group(group);
  core::ProcessSpec s{"srun",
                      {"--nodes=1", "--ntasks=1", "--nodelist=" + node, "--cpus-per-task=" + std::to_string(g.cpus),
                       "--job-name=" + program.what, "--kill-on-bad-exit=1", "--output=" + log.string(), "--quiet"},
                      program.what + " on node " + node};
  if (g.gpus > 0) s.args.push_back("--gpus-per-task=" + std::to_string(g.gpus));
  s.args.push_back(g.mem_mb > 0 ? "--mem=" + std::to_string(g.mem_mb) + "M" : "--mem=0");
  s.args.push_back(program.program.string());
  s.args.insert(s.args.end(), program.args.begin(), program.args.end());
  return s;
}

std::string submit(const LauncherConfig& c, const std::string& job_name, const fs::path& run_dir,
                   const std::vector<std::pair<std::string, int>>& counts, const std::vector<std::string>& controller_args) {
  // Each node's share: the CPUs, GPUs and memory of the workers placed on it (by node index),
  // plus one CPU for the controller on the first.
  std::vector<std::string> index;
  for (int i = 0; i < c.nodes; ++i) index.push_back(std::to_string(i));
  const auto placed = place(c, counts, index);
  std::vector<int> cpus(static_cast<size_t>(c.nodes), 0), gpus(cpus), mem(cpus);
  cpus[0] = 1;
  for (const auto& [group, at] : placed)
    for (const auto& n : at) {
      const auto g = c.group(group);
      const auto i = static_cast<size_t>(std::stoi(n));
      cpus[i] += g.cpus, gpus[i] += g.gpus, mem[i] += g.mem_mb;
    }
  const fs::path dir = fs::absolute(run_dir) / "slurm";
  fs::create_directories(dir);
  const fs::path script = dir / "job.sh";
  {
    std::ofstream out(script);
    out << "#!/bin/sh\n# The controller of " << job_name << "; it starts the workers as job steps.\ncd '" << fs::current_path().string()
        << "'\nexec";
    for (const auto& a : controller_args) out << " '" << a << "'";
    out << "\n";
  }
  fs::permissions(script, fs::perms::owner_exec, fs::perm_options::add);
  std::vector<std::string> args = {"--parsable",
                                   "--job-name=" + job_name,
                                   "--nodes=" + std::to_string(c.nodes),
                                   "--ntasks-per-node=1",
                                   "--cpus-per-task=" + std::to_string(*std::max_element(cpus.begin(), cpus.end())),
                                   "--output=" + (dir / "job.out").string()};
  if (const int g = *std::max_element(gpus.begin(), gpus.end()); g > 0) args.push_back("--gpus-per-node=" + std::to_string(g));
  if (const int m = *std::max_element(mem.begin(), mem.end()); m > 0) args.push_back("--mem=" + std::to_string(m) + "M");
  if (!c.partition.empty()) args.push_back("--partition=" + c.partition);
  if (!c.account.empty()) args.push_back("--account=" + c.account);
  if (!c.time.empty()) args.push_back("--time=" + c.time);
  args.insert(args.end(), c.sbatch_args.begin(), c.sbatch_args.end());
  args.push_back(script.string());
  std::string job = run("sbatch", args);
  job = job.substr(0, job.find(';'));  // "id;cluster" on a federation
  if (job.empty() || job.find_first_not_of("0123456789") != std::string::npos) throw Error("sbatch answered '" + job + "', not a job id");
  std::ofstream(dir / "job") << job << "\n";
  return job;
}

std::string job_state(const std::string& job) {
  try {
    return run("squeue", {"--noheader", "--jobs=" + job, "--format=%T"});
  } catch (const TimeoutError&) {
    throw;
  } catch (const Error&) {  // squeue fails for a job that has left the queue
    return "";
  }
}

void stop(const std::string& job, bool now) {
  if (now) run("scancel", {job});
  else run("scancel", {"--batch", "--signal=TERM", job});
}

}  // namespace slurm
}  // namespace flotilla::controller
