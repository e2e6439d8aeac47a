"""Experiments that test the two claims gymbox is built on (issue 12; see docs/experiments.md).

* :mod:`benchmarks.claim_masking` — Claim A: scoring infrastructure failures as 0 pushes the
  policy away from the (correct) tool calls that touch the flaky sandbox; masking does not.
* :mod:`benchmarks.claim_intrinsic` — Claim B: intrinsic rewards (majority vote,
  self-certainty, negative entropy) collapse entropy and accuracy; gold on a fraction of the
  prompts, or an entropy guard, prevents it.

Both run the real pipeline: the envs here are ordinary :class:`gymbox.envs.ToolEnv` s, episodes
run in real Docker sandboxes behind the runtime's real fault injector, advantages come from
:class:`gymbox.rewards.mix.RewardMix`, and training is :func:`gymbox.agents.loop.run_loop` with
:class:`gymbox.agents.trainer.PolicyTrainer`. The policy is, by default, a tiny Llama built from
SmolLM2's tokenizer (:mod:`benchmarks.experiments.tiny`) so that tens of steps × seeds fit in
minutes on two cores; ``--model embedded`` runs the embedded SmolLM2-135M instead.
"""
