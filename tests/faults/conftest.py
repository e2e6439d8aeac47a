"""Every fault test that touches the engine must leave none of its containers behind."""

from __future__ import annotations

import pytest

from tests.faults.workload import containers_left


@pytest.fixture(autouse=True)
async def no_container_left_behind(request):
    yield
    if request.node.get_closest_marker("docker") is None:
        return
    client = request.getfixturevalue("docker_client")
    left = await containers_left(client)
    assert not left, f"{len(left)} containers of this test are still on the engine"
