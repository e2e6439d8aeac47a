"""Every exception from the docker SDK and its transport, classified once, here.

Two questions are asked of a failed control-plane call (create, start, inspect, remove):

* :func:`is_transient` — may the same call be tried again? Connection errors and 5xx answers
  are; a 4xx is our request's fault and will fail the same way again.
* :func:`classify` — which gymbox error does it become? Connection failures are
  :class:`EngineUnavailable`; a 400 is the caller's settings, :class:`ConfigurationError`; a
  missing image is :class:`ImageMissing`; anything else the engine refused while making a
  sandbox is :class:`SandboxStartError`.

:func:`control_call` runs one blocking SDK call off the event loop under the retry policy:
jittered exponential backoff, a total deadline, transient errors only. Exec requests never go
through it: a command is never run twice by a retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import docker.errors
import requests.exceptions
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from gymbox.runtime.errors import (
    ConfigurationError,
    EngineUnavailable,
    GymboxError,
    ImageMissing,
    SandboxStartError,
)

T = TypeVar("T")

CONNECTION_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """True when repeating the same control-plane call may succeed."""
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    if isinstance(exc, docker.errors.APIError):
        return exc.status_code is not None and exc.status_code >= 500
    return False


def is_connection_error(exc: BaseException) -> bool:
    """True when the engine itself could not be reached."""
    return isinstance(exc, CONNECTION_ERRORS) or (
        isinstance(exc, docker.errors.DockerException)
        and not isinstance(exc, docker.errors.APIError)
    )


def classify(exc: BaseException, *, doing: str, first: BaseException | None = None
             ) -> GymboxError:
    """The gymbox error for an SDK failure while ``doing`` something (for the message).

    ``first`` is the first failure of a retried call when it differs from the last one (a
    start that failed with the real reason, then a retry that found the container removed).
    """
    if isinstance(exc, GymboxError):
        return exc
    if isinstance(exc, docker.errors.ImageNotFound):
        return ImageMissing(f"{doing}: the image is not on the engine; run `gymbox image build`")
    if is_connection_error(exc):
        return EngineUnavailable(f"{doing}: the Docker engine did not answer ({exc})", cause=exc)
    if isinstance(exc, docker.errors.APIError) and exc.status_code == 400:
        return ConfigurationError(
            f"{doing}: the engine rejected the sandbox's settings ({exc.explanation}); "
            "fix the SandboxSpec")
    reason = f"{exc}" if first is None or first is exc else f"{first}; then {exc}"
    return SandboxStartError(f"{doing}: the engine refused ({reason})", cause=exc)


CONTROL_DEADLINE_S = 30.0
"""The most one control-plane call (create, start, inspect, remove) may take, retries included."""


async def control_call(fn: Callable[[], T], *, doing: str,
                       deadline_s: float = CONTROL_DEADLINE_S) -> T:
    """Run the blocking SDK call ``fn`` in a thread, retrying transient failures.

    Raises:
        GymboxError: the classified failure, after retries ran out or at once if not transient.
    """
    retrying = AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=0.1, max=2.0),
        stop=stop_after_delay(deadline_s),
        reraise=True,
    )
    failures: list[BaseException] = []
    try:
        async for attempt in retrying:
            with attempt:
                try:
                    return await asyncio.to_thread(fn)
                except Exception as exc:
                    failures.append(exc)
                    raise
    except Exception as exc:
        raise classify(exc, doing=doing, first=failures[0] if failures else None) from exc
    raise AssertionError("unreachable: tenacity either returns or raises")
