"""PPO on CartPole-v1 through flotilla.make_vec, in PyTorch: a training loop in one file.

    PYTHONPATH=build/release/python /usr/bin/python3 python/examples/cartpole_ppo.py

Stops when the last 20 finished episodes average 475 (or at --total-steps). The hyperparameters
are those of configs/cartpole_ppo.yaml, Flotilla's own PPO on the same env.
"""

import argparse
import collections
import time

import numpy as np
import torch
from torch import nn

import flotilla


def layer(n_in, n_out, std=np.sqrt(2)):
    linear = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(linear.weight, std)
    nn.init.zeros_(linear.bias)
    return linear


class Agent(nn.Module):
    def __init__(self, obs_dim, n_actions, hidden=64):
        super().__init__()
        self.critic = nn.Sequential(layer(obs_dim, hidden), nn.Tanh(), layer(hidden, hidden), nn.Tanh(), layer(hidden, 1, 1.0))
        self.actor = nn.Sequential(layer(obs_dim, hidden), nn.Tanh(), layer(hidden, hidden), nn.Tanh(), layer(hidden, n_actions, 0.01))

    def value(self, obs):
        return self.critic(obs).squeeze(-1)

    def act(self, obs, action=None):
        dist = torch.distributions.Categorical(logits=self.actor(obs))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.value(obs)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--num-steps", type=int, default=64, help="steps per env between updates")
    p.add_argument("--total-steps", type=int, default=500_000)
    p.add_argument("--lr", type=float, default=2.5e-3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--target", type=float, default=475.0, help="stop when the last 20 episodes average this")
    a = p.parse_args()
    gamma, lam, clip, vf_coef, max_grad_norm, epochs, minibatches = 0.99, 0.95, 0.2, 0.5, 0.5, 4, 4

    torch.manual_seed(a.seed)
    torch.set_num_threads(1)
    envs = flotilla.make_vec("CartPole-v1", num_envs=a.num_envs, seed=a.seed)
    obs_dim, n_actions = envs.single_observation_space.shape[0], envs.single_action_space.n
    agent = Agent(obs_dim, n_actions)
    optimizer = torch.optim.Adam(agent.parameters(), lr=a.lr, eps=1e-5)

    T, N = a.num_steps, a.num_envs
    obs_buf = torch.zeros(T, N, obs_dim)
    actions_buf = torch.zeros(T, N, dtype=torch.long)
    logp_buf, rewards_buf, values_buf = torch.zeros(T, N), torch.zeros(T, N), torch.zeros(T, N)
    # A truncated episode's last reward is followed by the value of its final observation.
    next_values_buf, dones_buf = torch.zeros(T, N), torch.zeros(T, N)
    returns = collections.deque(maxlen=20)

    obs, _ = envs.reset()
    step, start, updates = 0, time.time(), 0
    while step < a.total_steps:
        frac = 1.0 - step / a.total_steps
        optimizer.param_groups[0]["lr"] = frac * a.lr
        for t in range(T):
            o = torch.from_numpy(obs.copy())  # the env overwrites obs at the next step
            with torch.no_grad():
                action, logp, _, value = agent.act(o)
            obs, reward, terminated, truncated, infos = envs.step(action.numpy())
            obs_buf[t], actions_buf[t], logp_buf[t], values_buf[t] = o, action, logp, value
            rewards_buf[t] = torch.from_numpy(reward.copy())
            done = infos["_final_obs"]
            with torch.no_grad():
                next_value = agent.value(torch.from_numpy(obs.copy()))
                if truncated.any():  # bootstrap from where a truncated episode stopped
                    final = torch.from_numpy(infos["final_obs"][truncated].copy())
                    next_value[torch.from_numpy(truncated.copy())] = agent.value(final)
            next_value[torch.from_numpy(terminated.copy())] = 0.0
            next_values_buf[t], dones_buf[t] = next_value, torch.from_numpy(done.astype(np.float32))
            returns.extend(infos["episode_return"][done].tolist())
        step += T * N

        # Generalized advantage estimation; an episode's end cuts the recursion.
        advantages = torch.zeros(T, N)
        last = torch.zeros(N)
        for t in reversed(range(T)):
            delta = rewards_buf[t] + gamma * next_values_buf[t] - values_buf[t]
            last = delta + gamma * lam * (1.0 - dones_buf[t]) * last
            advantages[t] = last
        targets = advantages + values_buf

        b_obs, b_actions, b_logp = obs_buf.reshape(-1, obs_dim), actions_buf.reshape(-1), logp_buf.reshape(-1)
        b_adv, b_targets = advantages.reshape(-1), targets.reshape(-1)
        batch = T * N
        for _ in range(epochs):
            order = torch.randperm(batch)
            for mb in order.chunk(minibatches):
                _, logp, entropy, value = agent.act(b_obs[mb], b_actions[mb])
                ratio = (logp - b_logp[mb]).exp()
                adv = b_adv[mb]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
                value_loss = 0.5 * ((value - b_targets[mb]) ** 2).mean()
                loss = policy_loss + vf_coef * value_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
                optimizer.step()
        updates += 1
        mean = np.mean(returns) if returns else float("nan")
        if updates % 10 == 0 or (len(returns) == 20 and mean >= a.target):
            print(f"step {step:7d}  mean return (last 20) {mean:6.1f}  {time.time() - start:5.1f} s", flush=True)
        if len(returns) == 20 and mean >= a.target:
            print(f"reached a 20-episode mean of {mean:.1f} at step {step} in {time.time() - start:.1f} s")
            return 0
    print(f"stopped at {a.total_steps} steps; the last 20 episodes average {np.mean(returns):.1f}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
