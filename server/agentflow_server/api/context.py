"""The servicer context type every servicer method receives."""

from typing import Any

import grpc

Context = grpc.aio.ServicerContext[Any, Any]
