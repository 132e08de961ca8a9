"""The building blocks: X25519 and HKDF, AES-GCM, the AES-CTR PRG, Shamir sharing, fixed-point
quantisation and the neighbour graph, each against numbers worked out by hand."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from fedloom.secagg import crypto, shamir
from fedloom.secagg.graph import default_neighbours, harary_neighbours, threshold_of
from fedloom.secagg.quantize import (
    dequantize_sum,
    dequantize_weight_sum,
    max_summands,
    quantize,
    quantize_weight,
)


def test_x25519_agreement_is_symmetric_and_refuses_a_low_order_key() -> None:
    a_sk, a_pk = crypto.keypair()
    b_sk, b_pk = crypto.keypair()
    assert crypto.agree(a_sk, b_pk) == crypto.agree(b_sk, a_pk)
    assert crypto.public_of(a_sk) == a_pk
    with pytest.raises(ValueError, match="not usable"):
        crypto.agree(a_sk, bytes(32))  # the point of order 1: an all-zero shared secret
    with pytest.raises(ValueError, match="32 bytes"):
        crypto.check_public(b"short")
    crypto.check_public(b_pk)


def test_aes_gcm_authenticates_the_ciphertext_and_its_associated_data() -> None:
    key = crypto.derive(bytes(32), b"test")
    sealed = crypto.encrypt(key, b"share", b"from 1 to 2")
    assert len(sealed) == crypto.NONCE_BYTES + 5 + crypto.TAG_BYTES
    assert crypto.decrypt(key, sealed, b"from 1 to 2") == b"share"
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(key, sealed, b"from 1 to 3")  # replayed to another recipient
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(key, flipped, b"from 1 to 2")


def test_hkdf_binds_the_purpose() -> None:
    secret = bytes(range(32))
    assert crypto.derive(secret, b"a") != crypto.derive(secret, b"b")
    assert crypto.derive(secret, b"a") == crypto.derive(secret, b"a")


def test_the_prg_is_aes_ctr_over_zeros_reduced_modulo_two_to_the_bits() -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = bytes(range(32))
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(24))
    words64 = [int.from_bytes(stream[i : i + 8], "little") for i in (0, 8, 16)]
    words32 = [int.from_bytes(stream[i : i + 4], "little") for i in (0, 4, 8)]
    assert crypto.expand(key, 3, 64).tolist() == words64
    assert crypto.expand(key, 3, 40).tolist() == [w % 2**40 for w in words64]
    assert crypto.expand(key, 3, 32).tolist() == words32  # 4 bytes a value up to 32 bits
    assert crypto.expand(key, 3, 20).tolist() == [w % 2**20 for w in words32]
    assert crypto.expand(key, 3, 20).tolist() != crypto.expand(bytes(32), 3, 20).tolist()
    with pytest.raises(ValueError, match="32 bytes"):
        crypto.expand(key[:16], 3, 32)  # never a truncated seed


def test_shamir_any_t_shares_reconstruct_and_fewer_do_not() -> None:
    secret = bytes(range(1, 33))
    shares = shamir.split(secret, [1, 2, 3, 4, 5], threshold=3)
    for subset in itertools.combinations(shares, 3):
        assert shamir.reconstruct({x: shares[x] for x in subset}) == secret
    # two shares of a degree-2 polynomial interpolate a line, with another constant term
    try:
        wrong: bytes | None = shamir.reconstruct({1: shares[1], 2: shares[2]})
    except ValueError:  # (almost always) not even a 32-byte value
        wrong = None
    assert wrong != secret


def test_shamir_reconstruction_is_lagrange_interpolation_at_zero() -> None:
    # f(x) = 5 + 7x: f(1) = 12, f(2) = 19, so 2 * 12 - 19 = 5
    shares = {x: (5 + 7 * x).to_bytes(shamir.SHARE_BYTES, "big") for x in (1, 2)}
    assert shamir.reconstruct(shares) == (5).to_bytes(32, "big")
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(bytes(32), [1, 2], threshold=3)
    with pytest.raises(ValueError, match="distinct positive"):
        shamir.split(bytes(32), [0, 2], threshold=1)


def test_quantisation_by_hand() -> None:
    # clip 8, 2 bits: levels 0..3 at x = -8, -8/3, 8/3, 8; q = rint((x + 8) * 3 / 16)
    assert quantize(np.array([-9.0, -8.0, 0.0, 1.0, 8.0, 20.0]), 8.0, 2).tolist() == [
        0,
        0,
        2,  # 1.5 rounds to even
        2,  # 1.6875
        3,
        3,
    ]
    # the sum 0 + 3 of two clients decodes to 3 * 16/3 - 2 * 8 = 0
    assert dequantize_sum(np.array([3]), 2, 8.0, 2).tolist() == [0.0]
    assert quantize_weight(0.5, 2) == 2 and quantize_weight(1.7, 2) == 3
    assert dequantize_weight_sum(6, 2) == 2.0
    assert max_summands(22, 32) == 1024  # (2^32 - 1) // (2^22 - 1)


def test_quantisation_error_is_at_most_half_a_level_per_client() -> None:
    rng = np.random.default_rng(0)
    xs = rng.uniform(-8, 8, (5, 1000))
    total = np.sum([quantize(x, 8.0, 22) for x in xs], axis=0)
    error = np.abs(dequantize_sum(total, 5, 8.0, 22) - xs.sum(0)).max()
    assert error <= 5 * 8.0 / (2**22 - 1)


def test_harary_graph_is_k_regular_symmetric_and_complete_for_large_k() -> None:
    clients = list(range(10, 30))
    graph = harary_neighbours(clients, 4, np.random.default_rng(0))
    assert all(len(v) == 4 and c not in v for c, v in graph.items())
    assert all(c in graph[d] for c, v in graph.items() for d in v)
    complete = harary_neighbours([1, 2, 3], 8, np.random.default_rng(0))
    assert complete == {1: [2, 3], 2: [1, 3], 3: [1, 2]}
    assert default_neighbours(100) == 20 and default_neighbours(6) == 5
    assert threshold_of(6, 0.5) == 3 and threshold_of(21, 0.5) == 11 and threshold_of(3, 0.01) == 1


def test_harary_relabelling_depends_on_the_server_randomness() -> None:
    a = harary_neighbours(list(range(20)), 4, np.random.default_rng(1))
    b = harary_neighbours(list(range(20)), 4, np.random.default_rng(2))
    assert a != b
    assert Counter(len(v) for v in a.values()) == Counter({4: 20})
