"""One secure-aggregation round: its stages, its messages and what both halves share.

SecAgg+ (Bell, Bonawitz, Gascon, Lepoint, Raykova 2020, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead"), with SecAgg (Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning") as its complete graph. Four stages, each one exchange
between the server and the clients still in the round:

1. **advertise**: a client makes two X25519 key pairs (``c`` to encrypt shares, ``s`` for pairwise
   masks) and a 32-byte self-mask seed ``b``; it sends both public keys and a SHA-256 commitment to
   ``b`` (which lets the server check the seed it later reconstructs).
2. **share**: the server sends each client its neighbours' public keys; the client Shamir-shares
   ``b`` and ``s_sk`` with threshold ``t`` among its neighbours and itself, and sends each
   neighbour's pair of shares encrypted under a key only the two of them can derive.
3. **masked input** (a ``fit`` task): the server passes on the ciphertexts addressed to each
   client and names the neighbours that shared; the client trains, clips and quantises its update
   (``quantize``), and adds ``PRG(b)`` and, for each such neighbour ``j``, ``+PRG(s_ij)`` if its id
   is below ``j``'s and ``-PRG(s_ij)`` otherwise, all modulo ``2**modulus_bits``.
4. **unmask**: the server names which neighbours uploaded (``survivors``) and which shared but did
   not (``dropped``); each client sends its shares of ``b`` for the first and of ``s_sk`` for the
   second, never both for one client. The server reconstructs those secrets and removes the self
   masks of the survivors and the pairwise masks the dropped clients left behind.

The server (``server.ServerRound``) keeps only the running sum of the masked inputs, never one of them on
its own; it reconstructs ``b`` only for clients whose input is in the sum and ``s_sk`` only for
clients whose input is not, so what it can unmask is the sum and nothing smaller.

The client (``participant``) keeps the round's secrets in its state (``secagg/...`` arrays)
between stages and drops them after the last one; it refuses a stage of a session it did not
start.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedloom.secagg import crypto, shamir
from fedloom.secagg.quantize import (
    max_summands,
)

ADVERTISE = "secagg/advertise"
SHARE = "secagg/share"
UNMASK = "secagg/unmask"
"""Task kinds of the stages besides the masked input (stage 3 is a ``fit`` task)."""
STAGE_NAMES = ("advertise", "share", "masked", "unmask")
CONFIG_KEY = "secagg"
"""The task-config entry that carries a stage's protocol message from the server."""

ADVERTISE_BYTES = 2 * crypto.KEY_BYTES + 32
_PLAIN_SHARE = 16 + 2 * shamir.SHARE_BYTES  # sender, recipient, share of b, share of s_sk
CIPHERTEXT_BYTES = crypto.NONCE_BYTES + _PLAIN_SHARE + crypto.TAG_BYTES
_ENTRY = struct.Struct("<QH")  # recipient, ciphertext length
_REVEAL = struct.Struct("<QB")  # whose secret, which (0: b, 1: s_sk)
REVEAL_BYTES = _REVEAL.size + shamir.SHARE_BYTES
_B, _S = 0, 1

_PREFIX = "secagg/"
_SESSION, _C_SK, _S_SK, _SEED = "secagg/session", "secagg/c_sk", "secagg/s_sk", "secagg/b"
_PEERS, _PEER_KEYS, _OWN, _INBOX = "secagg/peers", "secagg/peer_keys", "secagg/own", "secagg/inbox"
_SHARE_KEYS = "secagg/share_keys"


class ProtocolError(ValueError):
    """A message that breaks the protocol: its sender is treated as dropped out of the round."""


@dataclass(frozen=True)
class Settings:
    """The protocol's parameters (the ``secure_aggregation`` config section)."""

    mode: str = "secagg_plus"
    neighbours: int | None = None
    threshold: float = 0.5
    clip_range: float = 8.0
    quantization_bits: int = 22
    modulus_bits: int = 32

    def __post_init__(self) -> None:
        if self.mode not in ("secagg_plus", "secagg"):
            raise ValueError(f"mode must be secagg_plus or secagg, got {self.mode!r}")
        if not self.clip_range > 0:
            raise ValueError(f"clip_range must be > 0, got {self.clip_range}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 1 <= self.quantization_bits < self.modulus_bits <= 64:
            raise ValueError(
                "need 1 <= quantization_bits < modulus_bits <= 64, got "
                f"{self.quantization_bits} and {self.modulus_bits}"
            )
        if self.neighbours is not None and self.neighbours < 1:
            raise ValueError(f"neighbours must be >= 1, got {self.neighbours}")

    @property
    def value_bytes(self) -> int:
        """Bytes per masked value on the wire: 4 up to 32 modulus bits, else 8."""
        return 4 if self.modulus_bits <= 32 else 8

    def masked_bytes(self, size: int, weights: int = 1) -> int:
        """The exact size of a masked input of ``size`` values and ``weights`` weights."""
        return (size + weights) * self.value_bytes

    def max_clients(self) -> int:
        """The most inputs one sum can hold without wrapping around the modulus."""
        return max_summands(self.quantization_bits, self.modulus_bits)

    def as_config(self) -> dict[str, Any]:
        return {
            "clip_range": self.clip_range,
            "quantization_bits": self.quantization_bits,
            "modulus_bits": self.modulus_bits,
        }


# -- encodings ---------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError(f"{what} must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ProtocolError(f"{what} is not valid base64") from None


def _as_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _as_array(data: bytes) -> np.ndarray:
    return np.array(bytearray(data), dtype=np.uint8)


def _commitment(seed: bytes, session: bytes) -> bytes:
    return hashlib.sha256(b"fedloom/secagg/seed" + session + seed).digest()


def _pair(session: bytes, i: int, j: int) -> bytes:
    lo, hi = min(i, j), max(i, j)
    return session + struct.pack("<QQ", lo, hi)


def share_key(
    private: bytes | X25519PrivateKey, public: bytes, session: bytes, i: int, j: int
) -> bytes:
    """The AES-GCM key clients ``i`` and ``j`` derive alike from their ``c`` keys."""
    return crypto.derive(
        crypto.agree(private, public), b"fedloom/secagg/share" + _pair(session, i, j)
    )


def mask_key(
    private: bytes | X25519PrivateKey, public: bytes, session: bytes, i: int, j: int
) -> bytes:
    """The PRG key of the pairwise mask of ``i`` and ``j``, from their ``s`` keys."""
    return crypto.derive(
        crypto.agree(private, public), b"fedloom/secagg/mask" + _pair(session, i, j)
    )


def self_mask_key(seed: bytes, session: bytes) -> bytes:
    return crypto.derive(seed, b"fedloom/secagg/self" + session)


def _point(client: int) -> int:
    """A client's Shamir point: its id plus one (points must be non-zero)."""
    return client + 1


def _config(task_config: Mapping[str, Any], stage: int) -> Mapping[str, Any]:
    cfg = task_config.get(CONFIG_KEY)
    if not isinstance(cfg, Mapping) or cfg.get("stage") != stage:
        raise ProtocolError(f"the task carries no secure-aggregation stage {stage} message")
    return cfg


def _session(cfg: Mapping[str, Any]) -> bytes:
    try:
        session = bytes.fromhex(str(cfg["session"]))
    except (KeyError, ValueError):
        raise ProtocolError("the stage message names no valid session") from None
    if len(session) != 16:
        raise ProtocolError("a session id is 16 bytes")
    return session


def _check_session(state: Mapping[str, np.ndarray], cfg: Mapping[str, Any]) -> bytes:
    session = _session(cfg)
    held = state.get(_SESSION)
    if held is None or _as_bytes(held) != session:
        raise ProtocolError(
            "this client did not take part in the earlier stages of this secure-aggregation "
            "session; it cannot join it midway"
        )
    return session


def _ids(value: object, what: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise ProtocolError(f"{what} must be a list of client ids")
    if len(set(value)) != len(value):
        raise ProtocolError(f"{what} names a client twice")
    return list(value)


def _entries(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        if pos + _ENTRY.size > len(data):
            raise ProtocolError("a share entry is cut short")
        j, n = _ENTRY.unpack_from(data, pos)
        pos += _ENTRY.size
        if pos + n > len(data):
            raise ProtocolError("a share entry is cut short")
        out.append((j, data[pos : pos + n]))
        pos += n
    return out


def stage_bytes(configs: Sequence[Mapping[str, Any]]) -> int:
    """The bytes of the stage messages in task configs (their JSON)."""
    return sum(len(json.dumps(c, separators=(",", ":"))) for c in configs)
