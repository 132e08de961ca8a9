"""Both halves of one secure-aggregation round, as pure functions of bytes and named arrays.

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

The server (``ServerRound``) keeps only the running sum of the masked inputs, never one of them on
its own; it reconstructs ``b`` only for clients whose input is in the sum and ``s_sk`` only for
clients whose input is not, so what it can unmask is the sum and nothing smaller.

Client state (``secagg/...`` arrays) holds the round's secrets between stages and is dropped after
the last one; a client refuses a stage of a session it did not start.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedloom.secagg import crypto, shamir
from fedloom.secagg.graph import default_neighbours, harary_neighbours, threshold_of
from fedloom.secagg.quantize import (
    dequantize_sum,
    dequantize_weight_sum,
    max_summands,
    quantize,
    quantize_weight,
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

    def masked_bytes(self, size: int) -> int:
        """The exact size of a masked input of a ``size``-value update (and its weight)."""
        return (size + 1) * self.value_bytes

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
    private: bytes | crypto.X25519PrivateKey, public: bytes, session: bytes, i: int, j: int
) -> bytes:
    """The AES-GCM key clients ``i`` and ``j`` derive alike from their ``c`` keys."""
    return crypto.derive(
        crypto.agree(private, public), b"fedloom/secagg/share" + _pair(session, i, j)
    )


def mask_key(
    private: bytes | crypto.X25519PrivateKey, public: bytes, session: bytes, i: int, j: int
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


# -- the client's half -------------------------------------------------------------------------


def client_advertise(state: dict[str, np.ndarray], task_config: Mapping[str, Any]) -> bytes:
    """Stage 1: fresh keys and seed into ``state``; returns ``c_pk || s_pk || H(b)``."""
    session = _session(_config(task_config, 1))
    for key in [k for k in state if k.startswith(_PREFIX)]:
        del state[key]
    c_sk, c_pk = crypto.keypair()
    s_sk, s_pk = crypto.keypair()
    seed = crypto.random_bytes()
    state[_SESSION], state[_C_SK] = _as_array(session), _as_array(c_sk)
    state[_S_SK], state[_SEED] = _as_array(s_sk), _as_array(seed)
    return c_pk + s_pk + _commitment(seed, session)


def client_share(state: dict[str, np.ndarray], task_config: Mapping[str, Any], me: int) -> bytes:
    """Stage 2: shares of ``b`` and ``s_sk`` for the neighbours the server names, each encrypted
    for its recipient; the client keeps its own pair of shares and the neighbours' keys."""
    cfg = _config(task_config, 2)
    session = _check_session(state, cfg)
    peers = cfg.get("peers")
    if not isinstance(peers, list) or not peers:
        raise ProtocolError("the share stage names no neighbours")
    ids, keys = [], []
    for entry in peers:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], int)):
            raise ProtocolError("a neighbour entry is [client id, c_pk, s_pk]")
        c_pk, s_pk = unb64(entry[1], "c_pk"), unb64(entry[2], "s_pk")
        if len(c_pk) != crypto.KEY_BYTES or len(s_pk) != crypto.KEY_BYTES:
            raise ProtocolError("a neighbour's public key is not 32 bytes")
        ids.append(entry[0])
        keys.append(c_pk + s_pk)
    if me in ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise ProtocolError("the neighbours must be distinct other clients")
    threshold = cfg.get("threshold")
    if not isinstance(threshold, int) or not 1 <= threshold <= len(ids) + 1:
        raise ProtocolError(f"threshold {threshold!r} is not in [1, {len(ids) + 1}]")
    holders = [_point(c) for c in [*ids, me]]
    seed_shares = shamir.split(_as_bytes(state[_SEED]), holders, threshold)
    key_shares = shamir.split(_as_bytes(state[_S_SK]), holders, threshold)
    c_sk = crypto.private_key(_as_bytes(state[_C_SK]))
    out = [struct.pack("<I", len(ids))]
    aead_keys = []
    for j, pair in zip(ids, keys, strict=True):
        plain = struct.pack("<QQ", me, j) + seed_shares[_point(j)] + key_shares[_point(j)]
        key = share_key(c_sk, pair[: crypto.KEY_BYTES], session, me, j)
        aead_keys.append(key)
        ciphertext = crypto.encrypt(key, plain, struct.pack("<QQ", me, j) + session)
        out.append(_ENTRY.pack(j, len(ciphertext)) + ciphertext)
    # the pair's AES-GCM key also opens what the neighbour sends back (stage 4)
    state[_SHARE_KEYS] = np.frombuffer(b"".join(aead_keys), np.uint8).reshape(len(ids), 32).copy()
    state[_PEERS] = np.array(ids, dtype=np.int64)
    state[_PEER_KEYS] = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(ids), 64).copy()
    state[_OWN] = _as_array(seed_shares[_point(me)] + key_shares[_point(me)])
    return b"".join(out)


def client_mask(
    update: np.ndarray,
    num_examples: int,
    state: dict[str, np.ndarray],
    task_config: Mapping[str, Any],
    me: int,
) -> bytes:
    """Stage 3: the masked, quantised (weighted) update, and the ciphertexts addressed to this
    client kept for stage 4."""
    cfg = _config(task_config, 3)
    session = _check_session(state, cfg)
    settings = _settings(cfg)
    if cfg.get("size") != update.shape[0]:
        raise ProtocolError(
            f"the update has {update.shape[0]} values, the round sums {cfg.get('size')}"
        )
    known = [int(p) for p in state[_PEERS]]
    peers = _ids(cfg.get("peers"), "peers")
    if not set(peers) <= set(known):
        raise ProtocolError("the masked-input stage names neighbours this client never shared with")
    inbox = cfg.get("inbox")
    if not isinstance(inbox, list):
        raise ProtocolError("the masked-input stage carries no shares for this client")
    packed = []
    for entry in inbox:
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in known):
            raise ProtocolError("a share entry is [neighbour id, ciphertext]")
        ciphertext = unb64(entry[1], "a share")
        packed.append(_ENTRY.pack(entry[0], len(ciphertext)) + ciphertext)
    state[_INBOX] = _as_array(b"".join(packed))

    scale = cfg.get("scale")
    weight = 1.0 if scale is None else min(1.0, num_examples / float(scale))
    bits, modulus = settings.quantization_bits, settings.modulus_bits
    # arithmetic in the ring's integer type wraps modulo 2^32 (or 2^64), a multiple of 2^modulus
    values = np.empty(update.shape[0] + 1, dtype=crypto.ring_dtype(modulus))
    values[:-1] = quantize(np.asarray(update, np.float64) * weight, settings.clip_range, bits)
    values[-1] = quantize_weight(weight, bits)
    values += crypto.expand(self_mask_key(_as_bytes(state[_SEED]), session), len(values), modulus)
    s_sk = crypto.private_key(_as_bytes(state[_S_SK]))
    keys = dict(zip(known, state[_PEER_KEYS], strict=True))
    for j in peers:
        s_pk = _as_bytes(keys[j][crypto.KEY_BYTES :])
        mask = crypto.expand(mask_key(s_sk, s_pk, session, me, j), len(values), modulus)
        if me < j:
            values += mask
        else:
            values -= mask
    return _wire(values, settings)


def client_unmask(state: dict[str, np.ndarray], task_config: Mapping[str, Any], me: int) -> bytes:
    """Stage 4: shares of ``b`` for the survivors and of ``s_sk`` for the dropped, never both
    for one client; the round's secrets are then dropped from ``state``."""
    cfg = _config(task_config, 4)
    session = _check_session(state, cfg)
    survivors = _ids(cfg.get("survivors"), "survivors")
    dropped = _ids(cfg.get("dropped"), "dropped")
    known = {int(p) for p in state[_PEERS]}
    if set(survivors) & set(dropped):
        raise ProtocolError("a client cannot both have survived and dropped out")
    if me not in survivors:
        raise ProtocolError("this client's masked input was not in the sum; it reveals nothing")
    if not (set(survivors) - {me}) <= known or not set(dropped) <= known:
        raise ProtocolError("the unmask stage names clients that are not this client's neighbours")
    threshold = cfg.get("threshold")
    if not isinstance(threshold, int) or len(survivors) < threshold:
        # Bonawitz et al.: fewer survivors than t and the sum would be too small to hide inputs
        raise ProtocolError(
            f"only {len(survivors)} survivors, fewer than the threshold {threshold}"
        )
    shares = _open_inbox(state, session, me)
    own = _as_bytes(state[_OWN])
    shares[me] = (own[: shamir.SHARE_BYTES], own[shamir.SHARE_BYTES :])
    out = []
    for j, kind in [*((j, _B) for j in survivors), *((j, _S) for j in dropped)]:
        if j not in shares:
            continue  # the share never arrived or did not decrypt: the server has the others
        out.append(_REVEAL.pack(j, kind) + shares[j][kind])
    for key in [k for k in state if k.startswith(_PREFIX)]:
        del state[key]
    return b"".join(out)


def _open_inbox(
    state: Mapping[str, np.ndarray], session: bytes, me: int
) -> dict[int, tuple[bytes, bytes]]:
    """The neighbours' shares addressed to this client that decrypt and are what they claim."""
    keys = dict(zip((int(p) for p in state[_PEERS]), state[_SHARE_KEYS], strict=True))
    data = _as_bytes(state.get(_INBOX, np.zeros(0, np.uint8)))
    out: dict[int, tuple[bytes, bytes]] = {}
    for j, ciphertext in _entries(data):
        key = _as_bytes(keys[j])
        try:
            plain = crypto.decrypt(key, ciphertext, struct.pack("<QQ", j, me) + session)
        except crypto.DecryptionError:
            continue
        if plain[:16] != struct.pack("<QQ", j, me):
            continue
        out[j] = (plain[16 : 16 + shamir.SHARE_BYTES], plain[16 + shamir.SHARE_BYTES :])
    return out


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


def _settings(cfg: Mapping[str, Any]) -> Settings:
    try:
        return Settings(
            clip_range=float(cfg["clip_range"]),
            quantization_bits=int(cfg["quantization_bits"]),
            modulus_bits=int(cfg["modulus_bits"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"the stage's quantisation settings are not usable: {exc}") from None


def _wire(values: np.ndarray, settings: Settings) -> bytes:
    if settings.modulus_bits < 8 * values.dtype.itemsize:
        values &= values.dtype.type((1 << settings.modulus_bits) - 1)
    return values.tobytes()


# -- the server's half -------------------------------------------------------------------------


@dataclass
class SecureSum:
    """What a secure round yields: the sum of the survivors' weighted updates and of their
    weights (dequantised), and how many inputs are in it."""

    total: np.ndarray
    weight: float
    count: int


@dataclass
class ServerRound:
    """The server's side of one round: it routes keys and shares, sums masked inputs as they
    arrive, and removes the masks once the survivors have revealed their shares.

    Each ``receive_*`` raises ``ProtocolError`` for a message that breaks the protocol; the caller
    treats its sender as dropped out of the stage.
    """

    settings: Settings
    size: int
    session: bytes = field(default_factory=lambda: crypto.random_bytes(16))
    keys: dict[int, bytes] = field(default_factory=dict)  # stage 1: c_pk || s_pk || H(b)
    neighbours: dict[int, list[int]] = field(default_factory=dict)
    threshold: int = 0
    shared: dict[int, dict[int, bytes]] = field(default_factory=dict)  # sender -> recipient -> ct
    masked: list[int] = field(default_factory=list)  # stage 3 survivors, in arrival order
    revealed: dict[tuple[int, int], dict[int, bytes]] = field(default_factory=dict)
    _sum: np.ndarray | None = None
    _asked: dict[int, tuple[set[int], set[int]]] = field(default_factory=dict)

    def config(self, stage: int, **extra: Any) -> dict[str, Any]:
        return {"stage": stage, "session": self.session.hex(), **extra}

    # stage 1
    def receive_keys(self, client: int, payload: bytes) -> None:
        if len(payload) != ADVERTISE_BYTES:
            raise ProtocolError(f"public keys take {ADVERTISE_BYTES} bytes, got {len(payload)}")
        c_pk, s_pk = payload[:32], payload[32:64]
        for name, key in (("c_pk", c_pk), ("s_pk", s_pk)):
            try:
                crypto.check_public(key)
            except ValueError as exc:
                raise ProtocolError(f"{name} is not a valid X25519 public key: {exc}") from None
        if c_pk == s_pk:
            raise ProtocolError("c_pk and s_pk must be two different keys")
        for other, held in self.keys.items():
            if {c_pk, s_pk} & {held[:32], held[32:64]}:
                raise ProtocolError(f"a public key repeats client {other}'s (a copied key)")
        self.keys[client] = payload

    def build_graph(self, rng: np.random.Generator) -> None:
        """The neighbours of every client that advertised, and the threshold."""
        clients = sorted(self.keys)
        if len(clients) < 2:
            raise ProtocolError(f"{len(clients)} client(s) advertised keys; a sum needs two")
        n = len(clients)
        if self.settings.mode == "secagg":
            k = n - 1
        else:
            k = min(n - 1, self.settings.neighbours or default_neighbours(n))
        self.neighbours = harary_neighbours(clients, k, rng)
        degree = min(len(v) for v in self.neighbours.values())
        self.threshold = threshold_of(degree + 1, self.settings.threshold)

    def share_config(self, client: int) -> dict[str, Any]:
        peers = [
            [j, b64(self.keys[j][:32]), b64(self.keys[j][32:64])] for j in self.neighbours[client]
        ]
        return self.config(2, peers=peers, threshold=self.threshold)

    # stage 2
    def receive_shares(self, client: int, payload: bytes) -> None:
        if client not in self.neighbours:
            raise ProtocolError("shares from a client that is not in this stage")
        if len(payload) < 4:
            raise ProtocolError("the share message is cut short")
        (count,) = struct.unpack_from("<I", payload)
        entries = _entries(payload[4:])
        recipients = [j for j, _ in entries]
        if count != len(entries) or sorted(recipients) != self.neighbours[client]:
            raise ProtocolError(
                "the shares are not exactly one for each of the client's neighbours"
            )
        if any(len(ct) != CIPHERTEXT_BYTES for _, ct in entries):
            raise ProtocolError(f"an encrypted share is not {CIPHERTEXT_BYTES} bytes")
        self.shared[client] = dict(entries)

    def mask_config(self, client: int, scale: float | None) -> dict[str, Any]:
        peers = [j for j in self.neighbours[client] if j in self.shared]
        inbox = [[j, b64(self.shared[j][client])] for j in peers]
        return self.config(
            3, peers=peers, inbox=inbox, scale=scale, size=self.size, **self.settings.as_config()
        )

    # stage 3
    def receive_masked(self, client: int, payload: bytes) -> None:
        if client not in self.shared:
            raise ProtocolError("a masked input from a client that did not share its keys")
        if client in self.masked:
            raise ProtocolError("a second masked input from one client")
        expected = self.settings.masked_bytes(self.size)
        if len(payload) != expected:
            raise ProtocolError(f"a masked input is {expected} bytes, got {len(payload)}")
        values = np.frombuffer(payload, dtype=crypto.ring_dtype(self.settings.modulus_bits))
        if (
            self.settings.modulus_bits not in (32, 64)
            and (values >> np.uint64(self.settings.modulus_bits)).any()
        ):
            raise ProtocolError(f"values outside Z_2^{self.settings.modulus_bits}")
        if self._sum is None:
            self._sum = np.zeros(self.size + 1, dtype=np.uint64)
        self._sum += values  # only the running sum is kept
        self.masked.append(client)

    def unmask_config(self, client: int) -> dict[str, Any]:
        alive = set(self.masked)
        mine = set(self.neighbours[client]) | {client}
        survivors = sorted(mine & alive)
        dropped = sorted((mine - alive - {client}) & set(self.shared))
        self._asked[client] = (set(survivors), set(dropped))
        return self.config(4, survivors=survivors, dropped=dropped, threshold=self.threshold)

    # stage 4
    def receive_reveal(self, client: int, payload: bytes) -> None:
        if len(payload) % REVEAL_BYTES:
            raise ProtocolError(f"a reveal message is whole entries of {REVEAL_BYTES} bytes")
        survivors, dropped = self._asked.get(client, (set(), set()))
        entries: dict[tuple[int, int], bytes] = {}
        for pos in range(0, len(payload), REVEAL_BYTES):
            j, kind = _REVEAL.unpack_from(payload, pos)
            allowed = survivors if kind == _B else dropped if kind == _S else set()
            if j not in allowed or (j, kind) in entries:
                raise ProtocolError(
                    f"a share of client {j}'s {'seed' if kind == _B else 'key'} that this "
                    "client was not asked for"
                )
            entries[(j, kind)] = payload[pos + _REVEAL.size : pos + REVEAL_BYTES]
        for (j, kind), share in entries.items():
            self.revealed.setdefault((j, kind), {})[_point(client)] = share

    def finish(self) -> SecureSum:
        """The unmasked sum; ``ProtocolError`` when a needed secret has too few shares."""
        alive = set(self.masked)
        if len(alive) < self.threshold:
            raise ProtocolError(
                f"{len(alive)} masked inputs, fewer than the threshold {self.threshold}"
            )
        if len(alive) > self.settings.max_clients():
            raise ProtocolError(
                f"{len(alive)} inputs overflow Z_2^{self.settings.modulus_bits} at "
                f"{self.settings.quantization_bits} quantisation bits"
            )
        assert self._sum is not None
        dropped = set(self.shared) - alive
        assert not alive & dropped  # a client's seed and mask key are never both reconstructed
        total = self._sum.copy()
        modulus = self.settings.modulus_bits
        for j in sorted(alive):
            seed = self._reconstruct(j, _B)
            total -= crypto.expand(self_mask_key(seed, self.session), self.size + 1, modulus)
        for j in sorted(dropped):
            s_sk = self._reconstruct(j, _S)
            for i in self.neighbours[j]:
                if i not in alive:
                    continue
                s_pk_i = self.keys[i][32:64]
                mask = crypto.expand(
                    mask_key(s_sk, s_pk_i, self.session, i, j), self.size + 1, modulus
                )
                if i < j:
                    total -= mask
                else:
                    total += mask
        if modulus < 64:
            total &= np.uint64((1 << modulus) - 1)
        s = self.settings
        return SecureSum(
            dequantize_sum(total[:-1], len(alive), s.clip_range, s.quantization_bits),
            dequantize_weight_sum(int(total[-1]), s.quantization_bits),
            len(alive),
        )

    def _valid(self, client: int, kind: int, secret: bytes) -> bool:
        """Whether a reconstructed secret is the one the client committed to in stage 1: its
        seed's hash, or its mask key's public key."""
        if kind == _B:
            return _commitment(secret, self.session) == self.keys[client][64:]
        return crypto.public_of(secret) == self.keys[client][32:64]

    def _reconstruct(self, client: int, kind: int) -> bytes:
        shares = self.revealed.get((client, kind), {})
        what = "self-mask seed" if kind == _B else "mask key"
        if len(shares) < self.threshold:
            raise ProtocolError(
                f"client {client}'s {what} has {len(shares)} shares, fewer than the threshold "
                f"{self.threshold}: too many of its neighbours dropped out"
            )
        # A bad share spoils a reconstruction; with spare shares, other subsets are tried.
        for subset in itertools.islice(itertools.combinations(sorted(shares), self.threshold), 16):
            try:
                secret = shamir.reconstruct({x: shares[x] for x in subset})
            except ValueError:
                continue
            if self._valid(client, kind, secret):
                return secret
        raise ProtocolError(f"client {client}'s {what} does not reconstruct from its shares")


def stage_bytes(configs: Sequence[Mapping[str, Any]]) -> int:
    """The bytes of the stage messages in task configs (their JSON)."""
    return sum(len(json.dumps(c, separators=(",", ":"))) for c in configs)
