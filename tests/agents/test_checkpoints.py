"""Checkpoints are atomic: SIGKILL during a save leaves complete checkpoints, never a torn one."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from gymbox.agents.checkpoints import atomic_directory, latest_checkpoint, remove_partial, verify

SAVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from transformers import AutoModelForCausalLM
    from gymbox.agents.trainer import PolicyTrainer, TrainerConfig, TrainingSample

    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    trainer = PolicyTrainer(model, TrainerConfig(learning_rate=1e-3))
    trainer.step([TrainingSample([1, 5, 7], [0, 1, 1], [0.0, -3.0, -3.0], advantage=1.0)])
    root = Path(sys.argv[2])
    trainer.save_checkpoint(root / "step-1")
    print("ready", flush=True)
    step = 2
    while True:  # save after save, until killed
        trainer.steps_done = step
        trainer.save_checkpoint(root / f"step-{step}")
        step += 1
""")


def test_sigkill_during_saves_never_leaves_a_torn_checkpoint(tmp_path, tiny_model_dir):
    root = tmp_path / "checkpoints"
    rng = random.Random(0)
    killed_mid_save = 0
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", SAVER, str(tiny_model_dir), str(root)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", child.communicate()
        time.sleep(rng.uniform(0.05, 0.6))
        child.kill()  # SIGKILL: no handler, no cleanup
        child.wait(timeout=30)
        killed_mid_save += bool(list(root.glob(".step-*")))
        # Every step-N that exists is complete and loads.
        for path in root.glob("step-*"):
            assert verify(path) is None, path
        found = latest_checkpoint(root)
        assert found.path is not None and found.skipped == ()
        state = torch.load(found.path / "trainer.pt", map_location="cpu", weights_only=False)
        assert state["steps_done"] == int(found.path.name.split("-")[1])
        remove_partial(root)
        assert not list(root.glob(".step-*"))
    assert killed_mid_save >= 1, "no kill landed during a save; the test proved nothing"


def test_the_newest_checkpoint_that_does_not_verify_is_skipped_with_the_reason(tmp_path):
    for step in (1, 2, 3):
        with atomic_directory(tmp_path / f"step-{step}") as tmp:
            (tmp / "trainer.pt").write_bytes(bytes(1000 * step))
    torn = tmp_path / "step-3" / "trainer.pt"
    torn.write_bytes(torn.read_bytes()[:100])  # damaged after the save
    (tmp_path / "step-4").mkdir()  # a directory a pre-manifest gymbox left
    found = latest_checkpoint(tmp_path)
    assert found.path == tmp_path / "step-2"
    assert [(p.name, why.split()[0]) for p, why in found.skipped] == [
        ("step-4", "no"), ("step-3", "trainer.pt")]


def test_a_failed_save_leaves_the_previous_checkpoint_untouched(tmp_path):
    with atomic_directory(tmp_path / "step-1") as tmp:
        (tmp / "trainer.pt").write_bytes(b"first")
    try:
        with atomic_directory(tmp_path / "step-1") as tmp:
            (tmp / "trainer.pt").write_bytes(b"half")
            raise OSError("disk full")
    except OSError:
        pass
    assert (tmp_path / "step-1" / "trainer.pt").read_bytes() == b"first"
    assert verify(tmp_path / "step-1") is None
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["step-1"]
