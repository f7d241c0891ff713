"""A TCP proxy that can turn its current connections into black holes (half-open links).

Fault injection by wrapping the real stream: TLS and MQTT pass through untouched; after
``freeze()`` the existing connections stay open but nothing is forwarded in either direction,
which is what a dead NAT entry or a pulled cable looks like to both ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self


class FreezableProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: list[dict[str, bool]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()

    def freeze(self) -> None:
        """Stop forwarding on every existing connection (new connections work normally)."""
        for conn in self._conns:
            conn["frozen"] = True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        state = {"frozen": False}
        self._conns.append(state)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump(reader, up_writer, state))
                tg.create_task(self._pump(up_reader, writer, state))
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict[str, bool]
    ) -> None:
        while True:
            data = await reader.read(65536)
            if state["frozen"]:
                if not data:
                    await asyncio.Event().wait()  # a black hole never reports EOF
                continue
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()
