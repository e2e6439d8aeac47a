"""gymbox environments inside trainers people already use.

* :mod:`gymbox.integrations.trl`: :class:`~gymbox.integrations.trl.GymboxRollout`, a
  ``rollout_func`` for TRL's ``GRPOTrainer`` that plays each prompt as a gymbox episode (sandboxes,
  recovery and attribution included) and hands TRL an infra-failed episode as unscorable.
* :mod:`gymbox.integrations.openenv`: any registered gymbox env behind the OpenEnv protocol
  (``gymbox serve ENV``), for OpenEnv clients.

Each module imports its host library only when used: ``pip install trl`` or
``pip install openenv-core`` for the one you need. This layer sits above ``agents`` and
``envs``; nothing below imports it.
"""
