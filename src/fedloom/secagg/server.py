"""The server's half of a secure-aggregation round (``fedloom.secagg.protocol`` describes the
four stages): it routes keys and shares, sums masked inputs as they arrive, and removes the masks
once the survivors have revealed their shares. It never holds a single unmasked input."""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedloom.secagg import crypto, shamir
from fedloom.secagg.graph import default_neighbours, harary_neighbours, threshold_of
from fedloom.secagg.protocol import (
    _B,
    _REVEAL,
    _S,
    ADVERTISE_BYTES,
    CIPHERTEXT_BYTES,
    REVEAL_BYTES,
    ProtocolError,
    Settings,
    _commitment,
    _entries,
    _point,
    b64,
    mask_key,
    self_mask_key,
)
from fedloom.secagg.quantize import dequantize_sum, dequantize_weight_sum


@dataclass
class SecureSum:
    """What a secure round yields: the sum of the survivors' weighted values and of each of
    their weights (dequantised), and how many inputs are in it."""

    total: np.ndarray
    weights: np.ndarray
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
    weights: int = 1
    """How many weights (each in ``[0, 1]``, on their own scale) follow the ``size`` values."""
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

    def mask_config(self, client: int) -> dict[str, Any]:
        peers = [j for j in self.neighbours[client] if j in self.shared]
        inbox = [[j, b64(self.shared[j][client])] for j in peers]
        return self.config(
            3,
            peers=peers,
            inbox=inbox,
            size=self.size,
            weights=self.weights,
            **self.settings.as_config(),
        )

    # stage 3
    def receive_masked(self, client: int, payload: bytes) -> None:
        if client not in self.shared:
            raise ProtocolError("a masked input from a client that did not share its keys")
        if client in self.masked:
            raise ProtocolError("a second masked input from one client")
        expected = self.settings.masked_bytes(self.size, self.weights)
        if len(payload) != expected:
            raise ProtocolError(f"a masked input is {expected} bytes, got {len(payload)}")
        values = np.frombuffer(payload, dtype=crypto.ring_dtype(self.settings.modulus_bits))
        if (
            self.settings.modulus_bits not in (32, 64)
            and (values >> np.uint64(self.settings.modulus_bits)).any()
        ):
            raise ProtocolError(f"values outside Z_2^{self.settings.modulus_bits}")
        if self._sum is None:
            self._sum = np.zeros(self.size + self.weights, dtype=np.uint64)
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
        length = self.size + self.weights
        for j in sorted(alive):
            seed = self._reconstruct(j, _B)
            total -= crypto.expand(self_mask_key(seed, self.session), length, modulus)
        for j in sorted(dropped):
            s_sk = self._reconstruct(j, _S)
            for i in self.neighbours[j]:
                if i not in alive:
                    continue
                s_pk_i = self.keys[i][32:64]
                mask = crypto.expand(mask_key(s_sk, s_pk_i, self.session, i, j), length, modulus)
                if i < j:
                    total -= mask
                else:
                    total += mask
        if modulus < 64:
            total &= np.uint64((1 << modulus) - 1)
        s = self.settings
        return SecureSum(
            dequantize_sum(total[: self.size], len(alive), s.clip_range, s.quantization_bits),
            np.array(
                [dequantize_weight_sum(int(w), s.quantization_bits) for w in total[self.size :]]
            ),
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
