"""`gymbox train` with ``policy.backend = "vllm"``: Ctrl-C stops the run as it does with the
transformers policy (issue 11's contract), though vLLM samples the episodes."""

from __future__ import annotations

from tests.agents.test_train import interrupt_when
from tests.vllm.conftest import needs_vllm

pytestmark = needs_vllm


def test_ctrl_c_while_vllm_samples_stops_within_a_token_and_saves_a_checkpoint(
    tmp_path, vllm_tiny_dir
):
    run = tmp_path / "run"
    # No evaluation and no warm-up: after the "training:" line the run only samples with vLLM
    # (the random model rarely ends a turn, so each call is up to 1500 tokens) and updates.
    out, took, _ = interrupt_when(
        r"training: ", ["--no-eval", "--model", str(vllm_tiny_dir), "--run-dir", str(run),
                        "--steps", "50", "--set", "policy.backend=vllm",
                        "--set", "sampling.max_new_tokens=1500", "--set", "budget.max_turns=1",
                        "--set", "loop.group_size=4", "--set", "loop.rollout_workers=1"],
        tmp_path, matches=1, wait_s=3.0)
    assert "step 1/50" not in out, "the first step finished before the signal; proved nothing"
    # Bounded by the product: one engine step, the checkpoint save and the engine's exit.
    assert took < 30, took
    assert "interrupted: checkpoint saved at step 0" in out
    assert (run / "checkpoints/step-0/trainer.pt").is_file()
