"""The gRPC layer: servicers that validate requests and hand typed commands on, and the interceptors around them."""
