"""SyncSandbox: the blocking twin used by Gymnasium's sync API."""

from __future__ import annotations

import pytest

from gymbox.runtime import InvalidRequest, SyncSandbox
from tests.runtime.conftest import BACKENDS, FAST, make_backend


@pytest.mark.parametrize("name", BACKENDS)
def test_sync_twin_has_the_same_behaviour(name):
    with SyncSandbox.open(FAST, backend=make_backend(name)) as sandbox:
        assert sandbox.exec("echo hi", timeout=10).stdout == "hi\n"
        sandbox.run_python("n = 6", timeout=10)
        assert sandbox.run_python("n * 7", timeout=10).stdout == "42\n"
        sandbox.write_file("f.txt", "data")
        assert sandbox.read_file("f.txt") == b"data"
        assert [e.name for e in sandbox.list_dir(".")] == ["f.txt"]
        with pytest.raises(InvalidRequest):
            sandbox.exec("", timeout=1)
