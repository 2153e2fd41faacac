"""How services reach the server: as generic handlers only.

The generated ``add_*_to_server`` functions hand a service's handlers to the server twice, as a generic
handler and as registered methods. grpcio's asyncio server (1.85) keeps one pending request for each
registered method and, for every call it accepts, waits on all of them at once with ``asyncio.wait``
(grpc/grpc#41796; grpc/grpc#43461, not released yet, takes that cost away). This server has some forty
methods, so each call paid for forty futures: about a tenth of the event loop's time under load in a
profile of SubmitPayment. Through generic handlers alone the server keeps one pending request, and finds a
method by its name in the services' tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import grpc


class _GenericOnly:
    """What the generated registration functions call on a server, keeping the generic handlers only."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self._server.add_generic_rpc_handlers(tuple(handlers))

    def add_registered_method_handlers(self, _service: str, _handlers: Mapping[str, Any]) -> None:
        # The same handlers came through add_generic_rpc_handlers: see the module's docstring.
        pass


def generic_only(server: grpc.aio.Server) -> grpc.aio.Server:
    """``server`` as the generated ``add_*_to_server`` functions (and grpc_health's and grpc_reflection's)
    should see it: each service is added as a generic handler, never as registered methods."""
    return cast(grpc.aio.Server, _GenericOnly(server))
