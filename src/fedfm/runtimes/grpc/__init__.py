"""The network runtime: ``fedfm serve`` / ``fedfm join`` over gRPC (TLS, tokens, chunked streams).

Kept import-light: ``grpc`` loads only when a server or client is built.
"""
