"""A local unix socket in front of a TLS engine, so the runtime talks to it as to a local one.

The runtime's :class:`~gymbox.runtime.DockerBackend` drives each sandbox's supervisor over the
raw socket of an attached exec stream, through asyncio; an engine reached over TLS hands out
an ``SSLSocket`` there, which asyncio cannot adopt. An :class:`EngineWorker` for a TLS engine
therefore serves a private unix socket (mode 0600, in a fresh 0700 directory) and forwards each
connection to the engine over its own TLS session, verified with the engine's CA and this
client's certificate: the bytes that cross the network are encrypted end to end exactly as with
``docker --tlsverify``, and the backend sees a plain local engine.

Example:
    >>> async def main(engine):  # doctest: +SKIP
    ...     async with TLSTunnel(engine) as tunnel:
    ...         client = docker.DockerClient(base_url=tunnel.address)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import tempfile
from urllib.parse import urlparse

from gymbox.distributed.engines import EngineConfig
from gymbox.runtime.errors import ConfigurationError

CHUNK = 1 << 16


class TLSTunnel:
    """Forward a private unix socket to ``engine``'s ``tcp://`` address over TLS.

    Raises (from ``start``):
        ConfigurationError: the engine has no TLS files, or they do not load.
    """

    def __init__(self, engine: EngineConfig) -> None:
        if engine.tls is None or engine.docker_host is None:
            raise ConfigurationError(f"engine {engine.name}: a TLS tunnel needs docker_host "
                                     "and tls")
        url = urlparse(engine.docker_host)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 2376
        self.engine = engine
        self._dir = ""
        self._server: asyncio.base_events.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        """The ``unix://`` address to give the Docker SDK."""
        return f"unix://{self._dir}/engine.sock"

    def _context(self) -> ssl.SSLContext:
        tls = self.engine.tls
        assert tls is not None
        tls.docker_tls()  # the same checks (files exist) as a direct client
        try:
            context = ssl.create_default_context(cafile=tls.ca_cert)
            if not tls.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if tls.client_cert is not None:
                context.load_cert_chain(tls.client_cert, tls.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"engine {self.engine.name}: the TLS files do not load: "
                                     f"{exc}") from exc
        return context

    async def start(self) -> None:
        context = self._context()
        self._dir = tempfile.mkdtemp(prefix="gymbox-tls-")  # 0700: only this user connects
        path = f"{self._dir}/engine.sock"

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.host, self.port, ssl=context, server_hostname=self.host)
            except (OSError, ssl.SSLError):
                writer.close()  # the client sees a dropped connection: the engine is away
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

        def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.ensure_future(serve(reader, writer))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

        self._server = await asyncio.start_unix_server(track, path, limit=CHUNK)
        os.chmod(path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    async def __aenter__(self) -> TLSTunnel:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close, so each direction ends on its own (an exec stream's
    stdin closes while its output still flows)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:
            writer.close()
    except (ConnectionError, ssl.SSLError, OSError):
        writer.close()
    except asyncio.CancelledError:
        writer.close()
        raise
    finally:
        with contextlib.suppress(Exception):
            if reader.at_eof() and writer.is_closing():
                await writer.wait_closed()
