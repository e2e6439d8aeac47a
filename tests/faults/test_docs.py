"""The example in docs/fault-testing.md runs as written, on the fault tests' env and agent."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from tests.faults.workload import ProductEnv, product_agent

pytestmark = pytest.mark.docker

DOC = Path(__file__).resolve().parents[2] / "docs" / "fault-testing.md"


async def test_the_pytest_example_in_the_docs_passes(monkeypatch):
    example = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]
    project = types.ModuleType("my_project.envs")
    project.MyEnv = ProductEnv
    project.scripted_agent = lambda turn, info: product_agent(turn, info["messages"])
    monkeypatch.setitem(sys.modules, "my_project", types.ModuleType("my_project"))
    monkeypatch.setitem(sys.modules, "my_project.envs", project)
    namespace: dict = {}
    exec(compile(example, str(DOC), "exec"), namespace)
    await namespace["test_my_env_survives_faults"]()
