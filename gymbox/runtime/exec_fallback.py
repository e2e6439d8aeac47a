"""The fallback for images without ``python3``: one ``docker exec`` per request.

:class:`ExecPerCallLink` speaks the supervisor's protocol on the host side of the
:class:`~gymbox.runtime.backend.Link`, so the :class:`~gymbox.runtime.sandbox.Sandbox` above it
(framing, ids, backstops, error mapping) and any fault injector wrapped around the backend work
unchanged. Each request becomes one ``docker exec`` (about 50-70 ms instead of about 2 ms).

Same semantics as the supervisor where the image allows:

* commands run as the agent's uid, in their own exec, with stdin at EOF unless given;
* the deadline is enforced inside the container by coreutils ``timeout`` (SIGTERM, then
  SIGKILL after the grace period), so the image needs ``timeout``;
* output is drained as it comes and capped with the supervisor's own :class:`Capped`;
* after every command, ``kill -9 -1`` as the agent's uid sweeps what it left running.

Not available: ``run_python`` (there is no Python to run it; it raises
:class:`~gymbox.runtime.errors.ConfigurationError`) and OOM reporting (``oom_killed`` is False).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import docker

from gymbox.runtime import wire
from gymbox.runtime.supervisor import Capped

log = logging.getLogger(__name__)

TIMED_OUT_BY_TERM = 124  # what coreutils `timeout` exits with when it had to send SIGTERM
WRITE_SCRIPT = 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"'
LIST_SCRIPT = "find \"$1\" -mindepth 1 -maxdepth 1 -printf '%f\\t%y\\t%s\\n'"
KINDS = {"f": "file", "d": "dir", "l": "symlink"}


class ExecPerCallLink:
    """A Link that answers supervisor requests by running one ``docker exec`` each."""

    def __init__(self, client: docker.DockerClient, container_id: str, *, agent_uid: int,
                 workdir: str, env: dict[str, str], lease_path: str) -> None:
        self._api = client.api
        self._container_id = container_id
        self._uid = agent_uid
        self._workdir = workdir
        self._env = env
        self._lease_path = lease_path
        self._inbox = bytearray()
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._send({"id": 0, "event": "ready", "mode": "exec-per-call"})

    async def read(self) -> bytes:
        return await self._outbox.get()

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionError("the exec-per-call link is closed")
        self._inbox += data
        for body in wire.bodies(self._inbox):
            request = json.loads(body)
            task = asyncio.get_running_loop().create_task(self._serve(request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for task in self._tasks:
                task.cancel()
            self._outbox.put_nowait(b"")

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message, separators=(",", ":")).encode()
        self._outbox.put_nowait(wire.frame(body))

    async def _serve(self, request: dict[str, Any]) -> None:
        try:
            answer = await asyncio.to_thread(self._handle, request)
        except (docker.errors.DockerException, OSError) as exc:
            # The exec could not be run or read: the link is as good as a dead stream.
            log.warning("exec-per-call request failed: %s", exc)
            self._outbox.put_nowait(b"")
            self._closed = True
            return
        self._send({"id": request["id"], **answer})

    # -- requests (blocking, in a worker thread) -------------------------------------------------

    def _handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "exec":
            return ok(self._command(request))
        if op == "python":
            return failed("ConfigurationError", "this image has no python3, so run_python "
                          "cannot run; use an image with python3 (`gymbox image build`)")
        if op == "write":
            data = base64.b64decode(request["data"])
            return self._file_op(["sh", "-c", WRITE_SCRIPT, "sh", request["path"],
                                  f"{request['mode']:o}"], data, lambda _out: {})
        if op == "read":
            limit = request["limit"]

            def decode(out: bytes) -> dict[str, Any]:
                if len(out) > limit:
                    raise OSError(errno.EFBIG, f"file is over the read limit of {limit} bytes")
                return {"data": base64.b64encode(out).decode()}

            return self._file_op(["head", "-c", str(limit + 1), "--", request["path"]], None,
                                 decode)
        if op == "list":
            return self._file_op(["sh", "-c", LIST_SCRIPT, "sh", request["path"]], None,
                                 list_entries)
        if op == "lease":
            deadline = int(time.time() + request["seconds"])
            self._run(["sh", "-c", f'echo {deadline} > {self._lease_path}'], user="0")
            return ok({})
        if op == "ping":
            self._run(["true"], user="0")
            return ok({})
        return failed("InvalidRequest", f"unknown op {op!r}")

    def _command(self, request: dict[str, Any]) -> dict[str, Any]:
        argv = ["timeout", "-s", "TERM", "-k", f"{request['grace']}", f"{request['timeout']}",
                *request["argv"]]
        stdin = base64.b64decode(request["stdin"]) if request.get("stdin") else b""
        env = {**self._env, **(request.get("env") or {})}
        start = time.monotonic()
        code, out, err = self._run(argv, user=str(self._uid), cwd=request.get("cwd"), env=env,
                                   stdin=stdin, cap=request["cap"])
        duration = time.monotonic() - start
        self._run(["sh", "-c", "kill -9 -1"], user=str(self._uid))
        timed_out = duration >= request["timeout"] and code in (TIMED_OUT_BY_TERM, 128 + 9)
        exit_code, sig = code, None
        if timed_out:
            exit_code, sig = None, 15 if code == TIMED_OUT_BY_TERM else 9
        elif code > 128:
            exit_code, sig = None, code - 128
        return {
            "exit_code": exit_code, "signal": sig, "stdout": out.text(), "stderr": err.text(),
            "stdout_bytes": out.total, "stderr_bytes": err.total,
            "truncated": out.truncated or err.truncated, "timed_out": timed_out,
            "oom_killed": False, "duration_s": duration,
        }

    def _file_op(self, argv: list[str], stdin: bytes | None,
                 decode: Callable[[bytes], dict[str, Any]]) -> dict[str, Any]:
        code, out, err = self._run(argv, user=str(self._uid), stdin=stdin or b"", cap=2**31)
        if code != 0:
            return failed("OSError", err.text().strip(), errno_from(err.text()))
        raw = bytes(out.head + out.tail)
        try:
            return ok(decode(raw))
        except OSError as exc:
            return failed("OSError", exc.strerror or str(exc), exc.errno)

    def _run(self, argv: list[str], *, user: str, cwd: str | None = None,
             env: dict[str, str] | None = None, stdin: bytes = b"",
             cap: int = 1 << 16) -> tuple[int, Capped, Capped]:
        exec_id = self._api.exec_create(
            self._container_id, argv, stdin=True, stdout=True, stderr=True, tty=False,
            user=user, workdir=cwd or self._workdir, environment=env or self._env)["Id"]
        sock: socket.socket = self._api.exec_start(exec_id, socket=True)._sock
        out, err = Capped(cap), Capped(cap)
        try:
            if stdin:
                sock.sendall(stdin)
            sock.shutdown(socket.SHUT_WR)
            buffered = b""
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                buffered += chunk
                while len(buffered) >= wire.MUX_HEADER.size:
                    stream, size = wire.MUX_HEADER.unpack_from(buffered)
                    if len(buffered) < wire.MUX_HEADER.size + size:
                        break
                    payload = buffered[wire.MUX_HEADER.size : wire.MUX_HEADER.size + size]
                    buffered = buffered[wire.MUX_HEADER.size + size :]
                    (out if stream == 1 else err).feed(payload)
        finally:
            sock.close()
        code = self._api.exec_inspect(exec_id)["ExitCode"]
        return (code if code is not None else 255), out, err


def ok(result: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "result": result}


def failed(kind: str, message: str, code: int | None = None) -> dict[str, Any]:
    return {"ok": False, "error": {"type": kind, "message": message, "errno": code}}


def errno_from(message: str) -> int:
    """The errno a coreutils error message names (their wording is strerror's)."""
    for code in (errno.ENOENT, errno.EACCES, errno.EISDIR, errno.ENOTDIR, errno.EROFS,
                 errno.ENOSPC, errno.EEXIST):
        if os.strerror(code) in message:
            return code
    return errno.EIO


def list_entries(out: bytes) -> dict[str, Any]:
    entries = []
    for line in out.decode("utf-8", "replace").splitlines():
        name, kind, size = line.rsplit("\t", 2)
        entries.append({"name": name, "kind": KINDS.get(kind, "other"), "size": int(size)})
    entries.sort(key=lambda e: e["name"])
    return {"entries": entries}
