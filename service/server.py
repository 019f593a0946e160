"""Running the app under uvicorn with guards against slow clients: a header-read timeout and a cap
on concurrent connections (``ServiceSettings.header_timeout_s`` and ``max_connections``).

Why: uvicorn's only timer on a connection is the keep-alive one, armed after a response. A client
that opens a connection and dribbles its request headers a byte at a time holds a socket and a
parser for as long as it likes; a thousand of them hold a thousand. Here a connection whose
request headers are not complete within ``header_timeout_s`` of its first byte (or of the
connection, for the first request) is closed, and beyond ``max_connections`` uvicorn answers 503.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import ServiceSettings


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers arrive too slowly."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._waiting_since_cycle: Any = None
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._waiting_since_cycle = self.cycle
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is self._waiting_since_cycle and not self.transport.is_closing():
            self.transport.close()  # the request never got past its headers: nothing to answer

    def data_received(self, data: bytes) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if idle:  # the first bytes of a new request: its headers must be in within the timeout
            self._arm()
        super().data_received(data)
        if self.cycle is not self._waiting_since_cycle:  # h11 parsed a whole request head
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_for(settings: ServiceSettings) -> type[H11Protocol]:
    """The h11 protocol class with this service's header timeout."""
    return type("ServiceH11Protocol", (HeaderTimeoutProtocol,), {"header_timeout_s": settings.header_timeout_s})


def run(app: Any, settings: ServiceSettings, host: str, port: int) -> None:
    """Serve ``app`` with the settings' connection guards."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info", http=protocol_for(settings),
                limit_concurrency=settings.max_connections)
