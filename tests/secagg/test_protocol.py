"""One secure-aggregation round driven stage by stage, with clients dropping out at every stage:
the unmasked sum is exactly the plaintext sum of the quantised inputs, the server never holds a
single input unmasked, and messages that break the protocol are refused with their reason."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import pytest

from fedloom.secagg import (
    CONFIG_KEY,
    ProtocolError,
    SecureSum,
    ServerRound,
    Settings,
    client_advertise,
    client_mask,
    client_share,
    client_unmask,
)
from fedloom.secagg.protocol import REVEAL_BYTES
from fedloom.secagg.quantize import dequantize_sum, dequantize_weight_sum, quantize, quantize_weight

SIZE = 50


@dataclass
class Round:
    """A server and its clients, run stage by stage; ``drop[stage]`` leave before sending."""

    settings: Settings
    n: int
    drop: dict[int, set[int]] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.updates = {i: rng.uniform(-2, 2, SIZE) for i in range(self.n)}
        self.examples = {i: 10 * (i + 1) for i in range(self.n)}
        self.server = ServerRound(self.settings, SIZE)
        self.states: dict[int, dict[str, np.ndarray]] = {i: {} for i in range(self.n)}
        self.uploads: dict[int, bytes] = {}

    def stage1(self) -> None:
        for i in range(self.n):
            msg = client_advertise(self.states[i], {CONFIG_KEY: self.server.config(1)})
            if i not in self.drop.get(1, set()):
                self.server.receive_keys(i, msg)
        self.server.build_graph(np.random.default_rng(self.seed))

    def stage2(self) -> None:
        for i in sorted(self.server.keys):
            msg = client_share(self.states[i], {CONFIG_KEY: self.server.share_config(i)}, i)
            if i not in self.drop.get(2, set()):
                self.server.receive_shares(i, msg)

    def stage3(self, scale: float | None = None) -> None:
        for i in sorted(self.server.shared):
            cfg = {CONFIG_KEY: self.server.mask_config(i)}
            w = 1.0 if scale is None else min(1.0, self.examples[i] / scale)
            msg = client_mask(self.updates[i] * w, np.array([w]), self.states[i], cfg, i)
            self.uploads[i] = msg
            if i not in self.drop.get(3, set()):
                self.server.receive_masked(i, msg)

    def stage4(self) -> None:
        for i in list(self.server.masked):
            msg = client_unmask(self.states[i], {CONFIG_KEY: self.server.unmask_config(i)}, i)
            if i not in self.drop.get(4, set()):
                self.server.receive_reveal(i, msg)

    def run(self, scale: float | None = None) -> SecureSum:
        self.stage1()
        self.stage2()
        self.stage3(scale)
        self.stage4()
        return self.server.finish()

    def plaintext(self, scale: float | None = None) -> SecureSum:
        """What the sum must be: the survivors' quantised (weighted) inputs, summed as integers
        and decoded by the same arithmetic."""
        s = self.settings
        alive = sorted(self.server.masked)
        ints = np.zeros(SIZE, np.uint64)
        weight = 0
        for i in alive:
            w = 1.0 if scale is None else min(1.0, self.examples[i] / scale)
            ints += quantize(self.updates[i] * w, s.clip_range, s.quantization_bits)
            weight += quantize_weight(w, s.quantization_bits)
        return SecureSum(
            dequantize_sum(ints, len(alive), s.clip_range, s.quantization_bits),
            np.array([dequantize_weight_sum(weight, s.quantization_bits)]),
            len(alive),
        )


def _equal(got: SecureSum, want: SecureSum) -> None:
    assert got.count == want.count
    np.testing.assert_array_equal(got.weights, want.weights)
    np.testing.assert_array_equal(got.total, want.total)  # exact: the integers were equal


SECAGG = Settings(mode="secagg")  # 6 clients: every client neighbours the 5 others, t = 3
PLUS = Settings(mode="secagg_plus", neighbours=4)  # 12 clients, 4 neighbours each, t = 3


@pytest.mark.parametrize("settings,n", [(SECAGG, 6), (PLUS, 12)], ids=["secagg", "secagg_plus"])
@pytest.mark.parametrize("stage", [2, 3, 4])
@pytest.mark.parametrize("dropouts", ["none", "one", "n-t"])
def test_the_unmasked_sum_is_the_plaintext_sum_of_the_quantised_inputs(
    settings: Settings, n: int, stage: int, dropouts: str
) -> None:
    rnd = Round(settings, n)
    rnd.stage1()
    t = rnd.server.threshold
    assert t == 3
    if settings.mode == "secagg":
        count = {"none": 0, "one": 1, "n-t": n - t}[dropouts]
        rnd.drop = {stage: set(range(count))}
    else:
        # SecAgg+: n - t dropouts among one client's neighbourhood (itself and its 4 neighbours)
        mine = [0, *rnd.server.neighbours[0]]
        count = {"none": 0, "one": 1, "n-t": len(mine) - t}[dropouts]
        rnd.drop = {stage: set(mine[1 : 1 + count])}
    rnd.stage2()
    rnd.stage3()
    rnd.stage4()
    expected_alive = n - (count if stage in (2, 3) else 0)
    assert len(rnd.server.masked) == expected_alive
    _equal(rnd.server.finish(), rnd.plaintext())


def test_weighted_inputs_carry_their_weight_masked_beside_them() -> None:
    rnd = Round(SECAGG, 6)
    got = rnd.run(scale=60.0)  # weights 10/60 ... 60/60
    _equal(got, rnd.plaintext(scale=60.0))
    mean = got.total / got.weights[0]
    want = sum(rnd.updates[i] * rnd.examples[i] for i in range(6)) / sum(rnd.examples.values())
    assert np.abs(mean - want).max() < 1e-4


def test_too_many_dropouts_fail_the_round_with_the_reason() -> None:
    rnd = Round(SECAGG, 6, drop={4: {0, 1, 2, 3}})  # 2 revealers, t = 3
    with pytest.raises(ProtocolError, match="fewer than the threshold 3"):
        rnd.run()
    rnd = Round(SECAGG, 6, drop={3: {0, 1, 2, 3}})
    rnd.stage1()
    rnd.stage2()
    rnd.stage3()
    assert len(rnd.server.masked) == 2
    with pytest.raises(ProtocolError, match="only 2 survivors"):
        rnd.stage4()  # the clients themselves refuse to unmask so small a sum


def _chi_square_16_bins(values: np.ndarray, modulus: int) -> float:
    """Pearson's statistic of ``values`` in 16 equal bins of ``[0, modulus)``."""
    counts = np.bincount((values.astype(np.int64) * 16 // modulus), minlength=16)
    expected = len(values) / 16
    return float(((counts - expected) ** 2 / expected).sum())


# chi-square with 15 degrees of freedom exceeds 56.49 with probability 1e-6
CHI2_15_AT_1E6 = 56.49


def test_each_masked_input_is_indistinguishable_from_uniform() -> None:
    settings = Settings(mode="secagg", quantization_bits=8, modulus_bits=16)
    rnd = Round(settings, 4)
    rnd.updates = {i: np.zeros(SIZE) for i in range(4)}  # the most structured input there is
    rnd.run()
    for i, payload in rnd.uploads.items():
        values = np.frombuffer(payload, "<u4")
        assert values.max() < 2**16
        assert _chi_square_16_bins(values, 2**16) < CHI2_15_AT_1E6, i
    # the same statistic tells the plain quantised input at once (every value is level 128)
    plain = quantize(np.zeros(SIZE + 1), 8.0, 8)
    assert _chi_square_16_bins(plain, 2**16) > 10 * CHI2_15_AT_1E6


def test_the_server_keeps_only_the_running_sum_and_unmasks_no_single_input() -> None:
    rnd = Round(SECAGG, 6, drop={3: {5}})
    rnd.stage1()
    rnd.stage2()
    rnd.stage3()
    # the server's state after the masked stage: keys, ciphertexts, one sum, names
    arrays = [v for v in vars(rnd.server).values() if isinstance(v, np.ndarray)]
    assert len(arrays) == 1 and arrays[0].shape == (SIZE + 1,)
    rnd.stage4()
    # reconstructed: the seeds of the 5 in the sum, the mask key of the one that is not; never both
    seeds = {j for (j, kind) in rnd.server.revealed if kind == 0}
    keys = {j for (j, kind) in rnd.server.revealed if kind == 1}
    assert seeds == {0, 1, 2, 3, 4} and keys == {5}
    # an honest client refuses to reveal both secrets of one client
    rnd2 = Round(SECAGG, 6)
    rnd2.stage1()
    rnd2.stage2()
    rnd2.stage3()
    cfg = rnd2.server.config(4, survivors=[0, 1, 2, 3, 4, 5], dropped=[5], threshold=3)
    with pytest.raises(ProtocolError, match="both"):
        client_unmask(rnd2.states[0], {CONFIG_KEY: cfg}, 0)


def test_bad_messages_are_refused_with_their_reason() -> None:
    rnd = Round(Settings(mode="secagg", quantization_bits=10, modulus_bits=20), 6)
    rnd.stage1()
    with pytest.raises(ProtocolError, match="copied key"):
        rnd.server.receive_keys(7, rnd.server.keys[0])
    with pytest.raises(ProtocolError, match="not a valid X25519"):
        rnd.server.receive_keys(7, bytes(64) + bytes(32))  # a forged, low-order key
    rnd.stage2()
    with pytest.raises(ProtocolError, match="one for each"):
        rnd.server.receive_shares(0, struct.pack("<I", 0))
    with pytest.raises(ProtocolError, match="not in this stage"):
        rnd.server.receive_shares(9, struct.pack("<I", 0))
    rnd.stage3()
    with pytest.raises(ProtocolError, match="second masked input"):
        rnd.server.receive_masked(0, rnd.uploads[0])
    fresh = ServerRound(rnd.settings, SIZE, session=rnd.server.session)
    fresh.shared = rnd.server.shared
    with pytest.raises(ProtocolError, match="bytes, got"):
        fresh.receive_masked(0, rnd.uploads[0][:-4])  # the wrong length
    with pytest.raises(ProtocolError, match="outside Z_2"):
        fresh.receive_masked(0, b"\xff\xff\xff\xff" * (SIZE + 1))  # out of the 20-bit field
    for i in list(rnd.server.masked):
        rnd.server.unmask_config(i)
    with pytest.raises(ProtocolError, match="not asked for"):
        # a share of client 1's mask key, which client 0 must never be asked for (1 survived)
        rnd.server.receive_reveal(0, struct.pack("<QB", 1, 1) + bytes(REVEAL_BYTES - 9))


def test_a_share_that_fails_to_decrypt_is_left_out_and_the_round_completes() -> None:
    rnd = Round(SECAGG, 6)
    rnd.stage1()
    rnd.stage2()
    # the server (or the network) alters the share client 1 sent client 0
    ct = rnd.server.shared[1][0]
    rnd.server.shared[1][0] = ct[:-1] + bytes([ct[-1] ^ 1])
    rnd.stage3()
    rnd.stage4()
    # shares of client 1's seed, by holder point (client id + 1): client 0 had none to give
    assert sorted(rnd.server.revealed[(1, 0)]) == [2, 3, 4, 5, 6]
    _equal(rnd.server.finish(), rnd.plaintext())


def test_a_client_cannot_join_a_session_midway() -> None:
    rnd = Round(SECAGG, 6)
    rnd.stage1()
    with pytest.raises(ProtocolError, match="earlier stages"):
        client_share({}, {CONFIG_KEY: rnd.server.share_config(0)}, 0)


def test_a_modulus_above_32_bits_takes_8_bytes_a_value_and_sums_exactly() -> None:
    rnd = Round(Settings(mode="secagg", quantization_bits=30, modulus_bits=48), 6, drop={3: {2}})
    got = rnd.run()
    assert {len(p) for p in rnd.uploads.values()} == {8 * (SIZE + 1)}
    _equal(got, rnd.plaintext())
