"""gymbox: train LLM agents with RL in multi-turn tool environments whose infrastructure
failures are recovered or masked, never scored as the agent's failure.

Layers (each a subpackage; dependencies point one way):

* :mod:`gymbox.runtime` — Docker sandboxes, the in-container supervisor, pools, faults, errors.
* :mod:`gymbox.envs` — Gymnasium tool environments, ``@tool``, tool-call parsing, registry.
* :mod:`gymbox.rewards` — gold verifiers, intrinsic rewards, mixing, mask-aware advantages.
* :mod:`gymbox.agents` — policies, multi-turn rollout, the GRPO trainer and the async loop.
"""

__version__ = "0.1.0"
