"""gRPC server types as the servicers and interceptors use them.

grpc-stubs declares these classes generic; grpcio's real classes cannot be
subscripted at runtime, so the parameters exist only for the type checker.
"""

from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Context = grpc.aio.ServicerContext
    Handler = grpc.RpcMethodHandler
    ServerInterceptor = grpc.aio.ServerInterceptor

__all__ = ["Context", "Handler", "ServerInterceptor"]
