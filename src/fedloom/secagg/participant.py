"""The client's half of a secure-aggregation round (``fedloom.secagg.protocol`` describes the
four stages): pure functions of the task's stage message and the client's state, which holds the
round's secrets between stages and loses them after the last."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedloom.secagg import crypto, shamir
from fedloom.secagg.protocol import (
    _B,
    _C_SK,
    _ENTRY,
    _INBOX,
    _OWN,
    _PEER_KEYS,
    _PEERS,
    _PREFIX,
    _REVEAL,
    _S,
    _S_SK,
    _SEED,
    _SESSION,
    _SHARE_KEYS,
    ProtocolError,
    Settings,
    _as_array,
    _as_bytes,
    _check_session,
    _commitment,
    _config,
    _entries,
    _ids,
    _point,
    _session,
    mask_key,
    self_mask_key,
    share_key,
    unb64,
)
from fedloom.secagg.quantize import quantize, quantize_weight


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
    values: np.ndarray,
    weights: np.ndarray,
    state: dict[str, np.ndarray],
    task_config: Mapping[str, Any],
    me: int,
) -> bytes:
    """Stage 3: the masked, quantised ``values`` (already weighted: ``core.summands``) and
    ``weights`` (each in ``[0, 1]``), and the ciphertexts addressed to this client kept for
    stage 4."""
    cfg = _config(task_config, 3)
    session = _check_session(state, cfg)
    settings = _settings(cfg)
    if cfg.get("size") != values.shape[0] or cfg.get("weights", 1) != weights.shape[0]:
        raise ProtocolError(
            f"the contribution has {values.shape[0]} values and {weights.shape[0]} weights, the "
            f"round sums {cfg.get('size')} and {cfg.get('weights', 1)}"
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

    bits, modulus = settings.quantization_bits, settings.modulus_bits
    size = values.shape[0]
    # arithmetic in the ring's integer type wraps modulo 2^32 (or 2^64), a multiple of 2^modulus
    ring = np.empty(size + weights.shape[0], dtype=crypto.ring_dtype(modulus))
    ring[:size] = quantize(np.asarray(values, np.float64), settings.clip_range, bits)
    ring[size:] = [quantize_weight(float(w), bits) for w in weights]
    ring += crypto.expand(self_mask_key(_as_bytes(state[_SEED]), session), len(ring), modulus)
    s_sk = crypto.private_key(_as_bytes(state[_S_SK]))
    keys = dict(zip(known, state[_PEER_KEYS], strict=True))
    for j in peers:
        s_pk = _as_bytes(keys[j][crypto.KEY_BYTES :])
        mask = crypto.expand(mask_key(s_sk, s_pk, session, me, j), len(ring), modulus)
        if me < j:
            ring += mask
        else:
            ring -= mask
    return _wire(ring, settings)


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
