"""The deployment transport: a versioned gRPC protocol (``proto/fedloom_transport.proto``),
chunked params/update transfer, TLS certificates and client authentication.

- ``certs``: ``fedloom certs`` (CA, server and client certificates, HMAC enrolment tokens);
- ``wire``: conversions between core types and protocol messages, chunking;
- ``hub``: the server's sessions, task inboxes and pending results;
- ``server``: the gRPC service (authentication, streaming, upload validation);
- ``client``: the client's channel and calls, with a content-hash params cache.
"""

from fedloom.transport.wire import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION"]
