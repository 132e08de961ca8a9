"""Secure aggregation: the server learns the sum of the clients' updates and nothing smaller.

SecAgg+ (Bell et al. 2020) and SecAgg (Bonawitz et al. 2017) as a four-stage round
(``protocol``: the stages and what they share; ``participant``: the client's half; ``server``: the
server's), built on X25519, HKDF-SHA256, AES-GCM and AES-CTR from ``cryptography``
(``crypto``), Shamir sharing (``shamir``), the neighbour graph (``graph``) and fixed-point
quantisation into ``Z_{2**b}`` (``quantize``). The README's "Secure aggregation" section says what
it protects against and what it does not.
"""

from fedloom.secagg.participant import client_advertise, client_mask, client_share, client_unmask
from fedloom.secagg.protocol import (
    ADVERTISE,
    CONFIG_KEY,
    SHARE,
    STAGE_NAMES,
    UNMASK,
    ProtocolError,
    Settings,
)
from fedloom.secagg.server import SecureSum, ServerRound

__all__ = [
    "ADVERTISE",
    "CONFIG_KEY",
    "SHARE",
    "STAGE_NAMES",
    "UNMASK",
    "ProtocolError",
    "SecureSum",
    "ServerRound",
    "Settings",
    "client_advertise",
    "client_mask",
    "client_share",
    "client_unmask",
]
