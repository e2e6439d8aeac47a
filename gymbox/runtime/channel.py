"""Framed, id-matched requests to a supervisor over a :class:`~gymbox.runtime.backend.Link`.

A frame is a 4-byte big-endian length and that many bytes of JSON (the supervisor's format, see
:mod:`gymbox.runtime.supervisor`). Each request gets a fresh id; one reader task matches answers
to waiting futures, so any number of requests may be in flight at once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

from gymbox.runtime import wire
from gymbox.runtime.backend import Link


class LinkLost(Exception):
    """The stream to the supervisor ended or broke; ``sent`` says whether the request left."""

    def __init__(self, reason: str, *, sent: bool) -> None:
        super().__init__(reason)
        self.sent = sent


class Garbled(Exception):
    """The supervisor sent bytes that are not a valid frame."""


class RemoteError(Exception):
    """The supervisor answered a request with an error."""

    def __init__(self, kind: str, message: str, errno: int | None) -> None:
        super().__init__(message)
        self.kind = kind
        self.errno = errno


class Channel:
    """Requests and answers over one supervisor link."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._lost: BaseException | None = None
        self._outbox = bytearray()
        self._batch: list[int] = []
        self._flush_scheduled = False
        self.last_heard = time.monotonic()
        """When the supervisor last sent anything (``time.monotonic()``)."""
        self.last_pressure: tuple[float, dict[str, Any]] | None = None
        """The supervisor's last resource-pressure report and when it came
        (``time.monotonic()``): it comes with answers to commands, cells and pings, and as a
        heartbeat while agent code runs."""
        self._reader = asyncio.create_task(self._read_loop())

    async def wait_ready(self, timeout: float) -> dict[str, Any]:
        """The supervisor's hello, or :class:`LinkLost` / ``TimeoutError``."""
        return await asyncio.wait_for(asyncio.shield(self._ready), timeout)

    async def call(self, op: str, backstop_s: float, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its answer, at most ``backstop_s`` seconds.

        Raises:
            LinkLost: the stream broke (``sent`` says whether this request had been written).
            Garbled: the stream carried something that is not a frame.
            RemoteError: the supervisor answered with an error.
            TimeoutError: no answer within ``backstop_s``.
            Exception: the error that :meth:`abort` was given.
        """
        if self._lost is not None:
            raise LinkLost(f"the supervisor stream is closed ({self._lost})", sent=False)
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        body = json.dumps({"id": rid, "op": op, **fields}, separators=(",", ":")).encode()
        self._outbox += wire.frame(body)
        self._batch.append(rid)
        if not self._flush_scheduled:
            # Requests made in the same loop turn leave in one write (one proxy wake-up).
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        try:
            answer = await asyncio.wait_for(future, backstop_s)
        finally:
            self._pending.pop(rid, None)
        if not answer.get("ok"):
            error = answer.get("error") or {}
            raise RemoteError(error.get("type", "?"), error.get("message", ""), error.get("errno"))
        return answer["result"]

    def _flush(self) -> None:
        self._flush_scheduled = False
        data, self._outbox = bytes(self._outbox), bytearray()
        batch, self._batch = self._batch, []
        try:
            self._link.write(data)
        except (ConnectionError, OSError) as exc:
            unsent = LinkLost(f"writing to the supervisor failed: {exc}", sent=False)
            for rid in batch:
                future = self._pending.get(rid)
                if future is not None and not future.done():
                    future.set_exception(unsent)
            self._fail_all(LinkLost(f"the supervisor stream broke: {exc}", sent=True))

    def abort(self, error: BaseException) -> None:
        """Fail every request waiting now, and every later one, with ``error`` (the sandbox
        was found frozen: no answer will come)."""
        self._fail_all(error)

    def close(self) -> None:
        self._reader.cancel()
        self._link.close()
        self._fail_all(LinkLost("the sandbox was closed", sent=True))

    async def _read_loop(self) -> None:
        buffer = bytearray()
        try:
            while True:
                chunk = await self._link.read()
                if not chunk:
                    raise LinkLost("the supervisor stream ended", sent=True)
                self.last_heard = time.monotonic()
                buffer += chunk
                for body in wire.bodies(buffer):
                    self._deliver(body)
        except asyncio.CancelledError:
            raise
        except LinkLost as exc:
            self._fail_all(exc)
        except Garbled as exc:
            self._fail_all(exc)
        except Exception as exc:  # the transport broke in a way only the backend knows
            self._fail_all(LinkLost(f"reading from the supervisor failed: {exc!r}", sent=True))

    def _deliver(self, body: bytes) -> None:
        try:
            message = json.loads(body)
            rid = message["id"]
        except (ValueError, KeyError, TypeError) as exc:
            raise Garbled(f"unreadable frame from the supervisor: {body[:80]!r}") from exc
        pressure = message.get("pressure")
        if isinstance(pressure, dict):
            self.last_pressure = (time.monotonic(), pressure)
        if message.get("event") == "ready":
            if not self._ready.done():
                self._ready.set_result(message)
            return
        if message.get("event") == "pressure":
            return
        future = self._pending.get(rid)
        if future is not None and not future.done():
            future.set_result(message)

    def _fail_all(self, exc: BaseException) -> None:
        if self._lost is None:
            self._lost = exc
        for future in [self._ready, *self._pending.values()]:
            if not future.done():
                future.set_exception(exc)
        # Nobody may be waiting on the hello any more; don't let asyncio report it as unhandled.
        if self._ready.done() and not self._ready.cancelled():
            self._ready.exception()
