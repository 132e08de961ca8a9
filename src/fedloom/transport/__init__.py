"""The deployment transport: a versioned gRPC protocol (``proto/fedloom_transport.proto``),
chunked transfer of blobs (models, control variates) and updates, TLS certificates and client
authentication.

- ``certs``: ``fedloom certs`` (CA, server and client certificates, HMAC enrolment tokens);
- ``wire``: conversions between core types and protocol messages, chunking;
- ``hub``: the server's sessions, task inboxes, the blobs of running tasks and pending results;
- ``server``: the gRPC service (authentication, streaming, upload validation);
- ``client``: the client's channel and calls, with a content-hash blob cache.
"""

from fedloom.transport.wire import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION"]
