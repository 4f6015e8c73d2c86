"""Meta-RL pieces: Gaussian policies, episodes and the batched sampler, returns and GAE, the
linear feature baseline, and the TRPO meta-step of MAML-TRPO."""
