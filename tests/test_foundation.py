"""The ground everything stands on: the engine, the image, the CLI's first answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from gymbox.runtime import image
from gymbox.runtime.errors import ImageMissing

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.docker


def gymbox(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gymbox.cli", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )


def run_in_sandbox_image(client: docker.DockerClient, code: str) -> str:
    output = client.containers.run(
        image.DEFAULT_IMAGE, ["python3", "-c", code], user=str(image.SANDBOX_UID),
        network_mode="none", labels={"gymbox": "1"}, remove=True, stderr=True,
    )
    return output.decode()


def test_image_runs_python_as_the_sandbox_user(docker_client):
    out = run_in_sandbox_image(
        docker_client,
        "import os, sqlite3, json, pwd; "
        "print(sum(range(10)), pwd.getpwuid(os.getuid()).pw_name, os.getcwd())",
    )
    assert out.split() == ["45", image.SANDBOX_USER, image.WORKSPACE]


def test_container_has_no_network(docker_client):
    out = run_in_sandbox_image(
        docker_client,
        "import socket\n"
        "for host in ('1.1.1.1', '10.0.0.1'):\n"
        "    s = socket.socket(); s.settimeout(3)\n"
        "    try:\n"
        "        s.connect((host, 80)); print('connected', host)\n"
        "    except OSError as e:\n"
        "        print('refused', host, e.errno)\n"
        "print(sorted(n for _, n in socket.if_nameindex()))",
    )
    assert "connected" not in out
    assert out.count("refused") == 2
    assert out.strip().splitlines()[-1] == "['lo']"


def test_image_build_is_cached(docker_client):
    tag = image.ensure_image(docker_client)
    first_id = docker_client.images.get(tag).id
    start = time.monotonic()
    assert image.ensure_image(docker_client) == tag
    assert time.monotonic() - start < 5
    assert docker_client.images.get(image.DEFAULT_IMAGE).id == first_id


def test_base_image_is_never_pulled_unasked(docker_client):
    with pytest.raises(ImageMissing, match="--pull"):
        image.build_from_base(docker_client, "gymbox-no-such-base:1")


def test_doctor_with_the_engine_up():
    proc = gymbox("doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "engine   ok" in proc.stdout
    assert "backend  docker" in proc.stdout


def test_doctor_without_an_engine(tmp_path):
    proc = gymbox("doctor", env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert proc.returncode == 1
    assert "no Docker engine answers" in proc.stdout
    assert "docker-up.sh" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_doctor_names_the_fix_for_a_missing_image():
    proc = gymbox("doctor", "--image", "gymbox-sandbox:no-such-tag")
    assert proc.returncode == 1
    assert "gymbox image build" in proc.stdout


@pytest.mark.parametrize(
    "args", [("--frobnicate",), ("doctor", "--frobnicate"), ("image", "build", "--nope")]
)
def test_unknown_options_are_one_line_errors(args):
    proc = gymbox(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "--help" in proc.stderr


def test_missing_engine_is_a_one_line_error(tmp_path):
    proc = gymbox("image", "list", env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_docker_up_finds_the_running_engine():
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts/docker-up.sh")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "already-up"
