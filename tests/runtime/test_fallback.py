"""Images without python3: one `docker exec` per call, with the same timeout and cap semantics."""

from __future__ import annotations

import io

import docker.errors
import pytest

from gymbox.runtime import ConfigurationError, DockerBackend, Sandbox, SandboxSpec

pytestmark = pytest.mark.docker

NO_PYTHON_IMAGE = "gymbox-test-nopython:latest"


@pytest.fixture(scope="module")
def no_python_image(engine_client):
    try:
        engine_client.images.get(NO_PYTHON_IMAGE)
    except docker.errors.ImageNotFound:
        dockerfile = b"FROM gymbox-sandbox:latest\nRUN rm -f /usr/bin/python3*\n"
        engine_client.images.build(fileobj=io.BytesIO(dockerfile), tag=NO_PYTHON_IMAGE,
                                   pull=False, rm=True, labels={"gymbox": "1"})
    return NO_PYTHON_IMAGE


@pytest.fixture
async def sandbox(no_python_image):
    spec = SandboxSpec(image=no_python_image, grace_s=0.5, output_cap_bytes=4096)
    sb = await Sandbox.open(spec, backend=DockerBackend())
    yield sb
    await sb.close()


async def test_commands_run_as_the_agent_with_stdin(sandbox):
    result = await sandbox.exec("id -u; cat; exit 4", stdin="piped", timeout=10)
    assert (result.exit_code, result.stdout) == (4, "1000\npiped")
    assert (await sandbox.exec(["python3", "-c", "1"], timeout=10)).exit_code != 0


async def test_deadline_and_grace(sandbox):
    term = await sandbox.exec("sleep 60", timeout=0.5)
    assert term.timed_out and term.signal == 15
    stubborn = await sandbox.exec("trap '' TERM; while :; do :; done", timeout=0.5)
    assert stubborn.timed_out and stubborn.signal == 9
    assert (await sandbox.exec("echo next", timeout=10)).stdout == "next\n"


async def test_output_is_capped_with_exact_totals(sandbox):
    result = await sandbox.exec("seq 1 100000", timeout=30)
    assert result.truncated and result.stdout.startswith("1\n2\n")
    assert result.stdout.endswith("100000\n") and len(result.stdout) < 4096 + 100
    assert result.stdout_bytes == sum(len(f"{i}\n") for i in range(1, 100001))


async def test_leftover_processes_are_swept(sandbox):
    pid = (await sandbox.exec("sleep 300 > /dev/null 2>&1 & echo $!", timeout=10)).stdout.strip()
    assert (await sandbox.exec(f"test -e /proc/{pid}", timeout=10)).exit_code == 1


async def test_files_work_and_run_python_says_what_is_missing(sandbox):
    await sandbox.write_file("d/f.bin", b"\x00\x01abc")
    assert await sandbox.read_file("d/f.bin") == b"\x00\x01abc"
    assert [(e.name, e.kind, e.size) for e in await sandbox.list_dir("d")] == [
        ("f.bin", "file", 5)]
    with pytest.raises(FileNotFoundError):
        await sandbox.read_file("missing")
    with pytest.raises(ConfigurationError, match="python3"):
        await sandbox.run_python("1 + 1", timeout=5)
