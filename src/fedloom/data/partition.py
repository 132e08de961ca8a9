"""Split a training set across simulated clients: IID and the standard non-IID schemes.

Every partitioner takes a ``numpy.random.Generator`` and returns one int64 array of training-row
indices per client. Each array is sorted ascending, the arrays are disjoint, and together they
cover every row. The same generator state always gives the same partition.

Schemes, with the papers that introduced or standardised them:

- :func:`iid`: uniform random split, the baseline of McMahan et al., "Communication-Efficient
  Learning of Deep Networks from Decentralized Data", AISTATS 2017.
- :func:`dirichlet`: label skew from per-class Dirichlet proportions. Hsu, Qi and Brown, "Measuring
  the Effects of Non-Identical Data Distribution for Federated Visual Classification",
  arXiv:1909.06335, 2019; in the per-class form of Yurochkin et al., "Bayesian Nonparametric
  Federated Learning of Neural Networks", ICML 2019, as benchmarked by Li et al., "Federated
  Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022 (NIID-Bench).
- :func:`shards`: the pathological split of McMahan et al. 2017: sort by label, cut into shards,
  give each client a few shards.
- :func:`quantity`: quantity skew with IID labels. Lognormal sizes follow FedLab (Zeng et al.,
  "FedLab: A Flexible Federated Learning Framework", JMLR 2023); power-law sizes follow LEAF
  (Caldas et al., "LEAF: A Benchmark for Federated Settings", arXiv:1812.01097, 2018) and FedProx
  (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020).
- :func:`natural`: one client per existing group (writer, speaker, hospital), as in LEAF.

Use :func:`partition` to pick a scheme by name from a config, and :func:`label_distribution`,
:func:`format_label_distribution` and :func:`plot_label_distribution` to inspect the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fedloom.errors import ConfigError

__all__ = [
    "PARTITION_KINDS",
    "dirichlet",
    "format_label_distribution",
    "iid",
    "label_distribution",
    "natural",
    "partition",
    "plot_label_distribution",
    "quantity",
    "shards",
]

PARTITION_KINDS = ("iid", "dirichlet", "shards", "quantity", "natural")

IndexArray = npt.NDArray[np.int64]


def iid(num_samples: int, num_clients: int, rng: np.random.Generator) -> list[IndexArray]:
    """Shuffle the rows and deal them out as evenly as possible.

    Client sizes differ by at most one: the first ``num_samples % num_clients`` clients get
    ``num_samples // num_clients + 1`` rows, the rest one fewer.
    """
    _check_num_clients(num_clients, num_samples)
    order = rng.permutation(num_samples).astype(np.int64)
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def dirichlet(
    labels: npt.ArrayLike,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
    max_attempts: int = 1000,
) -> list[IndexArray]:
    """Label-skewed split: each class is divided among clients in proportions ~ Dir(alpha).

    For every class ``k``, a proportion vector ``p_k ~ Dir(alpha * 1_N)`` over the ``N`` clients
    is drawn and the class's rows (shuffled) are cut in those proportions. Small ``alpha`` (0.05)
    gives each client few classes; large ``alpha`` (100) approaches the global label mix.
    Following the reference implementation of Yurochkin et al. (2019), also used by NIID-Bench,
    a client that already holds ``num_samples / N`` rows gets no share of later classes, which
    keeps client sizes from running away.

    The whole draw repeats until every client has at least ``min_size`` rows, at most
    ``max_attempts`` times.

    Raises
    ------
    ConfigError
        If ``alpha <= 0``, if the counts make ``min_size`` impossible, or if no draw within
        ``max_attempts`` satisfies it (the message suggests a larger alpha or fewer clients).
    """
    y = _check_labels(labels, "dirichlet")
    _check_num_clients(num_clients, len(y))
    if not (math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"partition.alpha must be a positive number, got {alpha}")
    if min_size < 0 or min_size * num_clients > len(y):
        raise ConfigError(
            f"dirichlet partition: min_size={min_size} for {num_clients} clients needs "
            f"{min_size * num_clients} samples, but there are {len(y)}"
        )
    if max_attempts < 1:
        raise ConfigError(f"dirichlet partition: max_attempts must be >= 1, got {max_attempts}")
    rows_by_class = [np.flatnonzero(y == label) for label in np.unique(y)]
    even_share = len(y) / num_clients
    concentration = np.full(num_clients, float(alpha))
    owner = np.empty(len(y), dtype=np.int64)
    for _ in range(max_attempts):
        sizes = np.zeros(num_clients, dtype=np.int64)
        for rows in rows_by_class:
            shuffled = rng.permutation(rows)
            open_clients = sizes < even_share
            proportions = np.where(open_clients, rng.dirichlet(concentration), 0.0)
            if proportions.sum() <= 0:
                # Tiny alpha can put all mass on clients that are full; share among the open ones.
                proportions = open_clients.astype(np.float64)
            cuts = (np.cumsum(proportions / proportions.sum()) * len(rows)).astype(np.int64)
            counts = np.diff(cuts[:-1], prepend=0, append=len(rows))
            owner[shuffled] = np.repeat(np.arange(num_clients), counts)
            sizes += counts
        if sizes.min() >= min_size:
            return _group_rows(owner, num_clients)
    raise ConfigError(
        f"dirichlet partition: in {max_attempts} draws with alpha={alpha}, some client always got "
        f"fewer than {min_size} samples ({len(y)} samples, {len(rows_by_class)} classes, "
        f"{num_clients} clients); increase partition.alpha, use fewer clients, or lower min_size"
    )


def shards(
    labels: npt.ArrayLike,
    num_clients: int,
    shards_per_client: int,
    rng: np.random.Generator,
) -> list[IndexArray]:
    """Pathological non-IID split of McMahan et al. (2017).

    Rows are sorted by label (in random order within a label), cut into
    ``num_clients * shards_per_client`` contiguous shards, and each client receives
    ``shards_per_client`` shards at random. With 2 shards per client most clients see at most
    2 labels. McMahan et al. used 200 shards of 300 MNIST images for 100 clients.

    When the row count is not a multiple of the shard count, the first
    ``num_samples % num_shards`` shards hold one extra row, so no row is dropped.
    """
    y = _check_labels(labels, "shards")
    _check_num_clients(num_clients, len(y))
    if shards_per_client < 1:
        raise ConfigError(f"partition.shards_per_client must be >= 1, got {shards_per_client}")
    num_shards = num_clients * shards_per_client
    if num_shards > len(y):
        raise ConfigError(
            f"shards partition: {num_clients} clients x {shards_per_client} shards = {num_shards} "
            f"shards, more than the {len(y)} samples; lower num_clients or shards_per_client"
        )
    shuffled = rng.permutation(len(y)).astype(np.int64)
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")]
    pieces = np.array_split(by_label, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in client_shards])) for client_shards in dealt]


def quantity(
    num_samples: int,
    num_clients: int,
    rng: np.random.Generator,
    distribution: Literal["lognormal", "power_law"] = "lognormal",
    sigma: float = 1.0,
    exponent: float = 1.5,
) -> list[IndexArray]:
    """Quantity skew: client sizes vary, labels stay IID.

    Raw client weights are drawn as ``exp(N(0, sigma^2))`` for ``"lognormal"``, or from a Pareto
    (type I) law with tail ``P(w > x) = x^-exponent`` for ``"power_law"``. The sizes are then
    ``1 + round(w_i / sum(w) * (num_samples - num_clients))`` by largest remainders, so they sum
    to ``num_samples`` and every client has at least one row. Rows are shuffled and dealt out in
    those sizes.
    """
    _check_num_clients(num_clients, num_samples)
    if distribution == "lognormal":
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ConfigError(f"partition.quantity_sigma must be >= 0, got {sigma}")
        log_weights = rng.normal(0.0, sigma, num_clients)
        # Shifting by the maximum before exp keeps huge sigma from overflowing to inf.
        weights = np.exp(log_weights - log_weights.max())
    elif distribution == "power_law":
        if not (math.isfinite(exponent) and exponent > 0):
            raise ConfigError(f"partition.quantity_exponent must be > 0, got {exponent}")
        weights = rng.pareto(exponent, num_clients) + 1.0
    else:
        raise ConfigError(
            f"partition.quantity_distribution must be 'lognormal' or 'power_law', "
            f"got {distribution!r}"
        )
    sizes = 1 + _apportion(weights, num_samples - num_clients)
    order = rng.permutation(num_samples).astype(np.int64)
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


def natural(groups: npt.ArrayLike) -> list[IndexArray]:
    """One client per distinct group value (writer, speaker, site), in sorted group order."""
    values = np.asarray(groups)
    if values.ndim != 1 or len(values) == 0:
        raise ConfigError(
            f"natural partition needs a non-empty 1-D array of group ids, got shape {values.shape}"
        )
    distinct, owner = np.unique(values, return_inverse=True)
    return _group_rows(owner.reshape(-1).astype(np.int64), len(distinct))


def partition(
    kind: str,
    labels: npt.ArrayLike,
    num_clients: int,
    *,
    seed: int,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    quantity_distribution: str = "lognormal",
    quantity_sigma: float = 1.0,
    groups: npt.ArrayLike | None = None,
    quantity_exponent: float = 1.5,
    min_size: int = 1,
) -> list[IndexArray]:
    """Partition training rows by scheme name, seeded with ``np.random.default_rng(seed)``.

    Parameters
    ----------
    kind:
        One of :data:`PARTITION_KINDS`.
    labels:
        The training labels; ``dirichlet`` and ``shards`` need integer class ids, the other
        schemes use only their count.
    num_clients:
        Number of clients; for ``natural`` it must equal the number of distinct groups.
    seed:
        Seed of the partition; the same seed gives the same partition.
    alpha, min_size:
        Dirichlet concentration and minimum client size for ``dirichlet``.
    shards_per_client:
        Shards per client for ``shards``.
    quantity_distribution, quantity_sigma, quantity_exponent:
        Size distribution for ``quantity``.
    groups:
        One group id per training row, for ``natural``.

    Examples
    --------
    >>> parts = partition("iid", [0, 1, 0, 1, 0], 2, seed=0)
    >>> [len(part) for part in parts]
    [3, 2]
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ConfigError(f"partition needs a 1-D array of labels, got shape {y.shape}")
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)):
        raise ConfigError(f"num_clients must be an integer, got {num_clients!r}")
    _check_num_clients(int(num_clients), len(y))
    rng = np.random.default_rng(seed)
    if kind == "iid":
        return iid(len(y), num_clients, rng)
    if kind == "dirichlet":
        return dirichlet(y, num_clients, alpha, rng, min_size=min_size)
    if kind == "shards":
        return shards(y, num_clients, shards_per_client, rng)
    if kind == "quantity":
        if quantity_distribution not in ("lognormal", "power_law"):
            raise ConfigError(
                f"partition.quantity_distribution must be 'lognormal' or 'power_law', "
                f"got {quantity_distribution!r}"
            )
        distribution: Literal["lognormal", "power_law"] = (
            "lognormal" if quantity_distribution == "lognormal" else "power_law"
        )
        return quantity(
            len(y), num_clients, rng, distribution, sigma=quantity_sigma, exponent=quantity_exponent
        )
    if kind == "natural":
        if groups is None:
            raise ConfigError(
                "partition 'natural' needs a group id per training row, and this dataset has "
                "none; load a CSV with group_column=..., or use iid, dirichlet, shards or quantity"
            )
        group_ids = np.asarray(groups)
        if group_ids.shape != y.shape:
            raise ConfigError(
                f"partition 'natural': groups has shape {group_ids.shape}, labels {y.shape}; "
                "give one group id per training row"
            )
        parts = natural(group_ids)
        if len(parts) != num_clients:
            raise ConfigError(
                f"partition 'natural' makes one client per group, and the data has {len(parts)} "
                f"groups; set num_clients to {len(parts)} (got {num_clients})"
            )
        return parts
    raise ConfigError(f"unknown partition {kind!r}; choose one of: {', '.join(PARTITION_KINDS)}")


def label_distribution(
    labels: npt.ArrayLike, parts: Sequence[npt.ArrayLike], num_classes: int
) -> npt.NDArray[np.int64]:
    """Count each client's rows per class: a ``(clients, num_classes)`` int64 array."""
    y = _check_labels(labels, "label_distribution")
    if len(y) and int(y.max()) >= num_classes:
        raise ConfigError(f"label {int(y.max())} is out of range for num_classes={num_classes}")
    counts = np.zeros((len(parts), num_classes), dtype=np.int64)
    for client, rows in enumerate(parts):
        counts[client] = np.bincount(y[np.asarray(rows, dtype=np.int64)], minlength=num_classes)
    return counts


def format_label_distribution(counts: npt.ArrayLike, max_rows: int = 20) -> str:
    """A text table of client sizes and per-class counts, e.g. for a log or the terminal.

    Columns are the client id, its size, its count for each class and its number of distinct
    classes. With more than ``max_rows`` clients the middle rows are elided. A total row and a
    summary line (size and class-count spread) always follow.
    """
    table = np.asarray(counts, dtype=np.int64)
    if table.ndim != 2:
        raise ConfigError(f"counts must be a (clients, classes) array, got shape {table.shape}")
    num_clients, num_classes = table.shape
    sizes = table.sum(axis=1)
    present = (table > 0).sum(axis=1)
    header = ["client", "size", *(str(k) for k in range(num_classes)), "classes"]

    def row(client: str, values: Sequence[Any]) -> list[str]:
        return [client, *(str(value) for value in values)]

    shown = list(range(num_clients))
    if num_clients > max_rows:
        head = (max_rows + 1) // 2
        shown = [*range(head), -1, *range(num_clients - (max_rows - head), num_clients)]
    lines = [header]
    for client in shown:
        if client < 0:
            lines.append(row("...", [""] * (num_classes + 2)))
        else:
            lines.append(row(str(client), [sizes[client], *table[client], present[client]]))
    lines.append(row("all", [sizes.sum(), *table.sum(axis=0), int((table.sum(0) > 0).sum())]))
    widths = [max(len(line[col]) for line in lines) for col in range(len(header))]
    text = [
        "  ".join(cell.rjust(widths[col]) for col, cell in enumerate(line)).rstrip()
        for line in lines
    ]
    if num_clients:
        text.append(
            f"{num_clients} clients, {int(sizes.sum())} samples; "
            f"size min {int(sizes.min())} / median {float(np.median(sizes)):g} / "
            f"max {int(sizes.max())}; classes per client min {int(present.min())} / "
            f"mean {float(present.mean()):.2f} / max {int(present.max())}"
        )
    if num_clients > max_rows:
        text.append(f"({num_clients - max_rows} clients not shown)")
    return "\n".join(text)


def plot_label_distribution(
    counts: npt.ArrayLike, path: str | Path, class_names: Sequence[str] | None = None
) -> Path:
    """Save a stacked horizontal bar chart (one bar per client, one colour per class) as PNG.

    Draws on a private Agg canvas, so it never touches pyplot's global state or needs a display.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = np.asarray(counts, dtype=np.int64)
    if table.ndim != 2:
        raise ConfigError(f"counts must be a (clients, classes) array, got shape {table.shape}")
    num_clients, num_classes = table.shape
    names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(f"got {len(names)} class names for {num_classes} classes")
    if num_classes <= 10:
        colours = [colormaps["tab10"](k) for k in range(num_classes)]
    elif num_classes <= 20:
        colours = [colormaps["tab20"](k) for k in range(num_classes)]
    else:
        colours = [colormaps["viridis"](k / (num_classes - 1)) for k in range(num_classes)]
    figure = Figure(figsize=(8.0, min(20.0, max(2.5, 0.25 * num_clients + 1.0))))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    clients = np.arange(num_clients)
    left = np.zeros(num_clients, dtype=np.int64)
    for k in range(num_classes):
        axes.barh(clients, table[:, k], left=left, height=0.8, color=colours[k], label=names[k])
        left += table[:, k]
    axes.invert_yaxis()
    axes.set_xlabel("samples")
    axes.set_ylabel("client")
    axes.set_title(f"Label distribution over {num_clients} clients")
    if num_classes <= 20:
        axes.legend(title="class", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    out = Path(path)
    figure.savefig(out, dpi=120, bbox_inches="tight")
    return out


def _check_num_clients(num_clients: int, num_samples: int) -> None:
    if num_clients < 1:
        raise ConfigError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > num_samples:
        raise ConfigError(
            f"num_clients ({num_clients}) is larger than the number of training samples "
            f"({num_samples}); every client needs at least one sample"
        )


def _check_labels(labels: npt.ArrayLike, scheme: str) -> IndexArray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ConfigError(f"{scheme} needs a 1-D array of labels, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        hint = "; for regression targets use the iid, quantity or natural partition"
        raise ConfigError(
            f"{scheme} needs integer class labels, got dtype {y.dtype}"
            + (hint if scheme in ("dirichlet", "shards") else "")
        )
    if y.size and int(y.min()) < 0:
        raise ConfigError(f"{scheme} needs class labels >= 0, got {int(y.min())}")
    return y.astype(np.int64, copy=False)


def _group_rows(owner: IndexArray, num_clients: int) -> list[IndexArray]:
    """Turn a per-row client id into per-client sorted row indices."""
    order = np.argsort(owner, kind="stable").astype(np.int64)
    boundaries = np.cumsum(np.bincount(owner, minlength=num_clients))[:-1]
    return list(np.split(order, boundaries))


def _apportion(weights: npt.NDArray[np.float64], total: int) -> IndexArray:
    """Integers proportional to ``weights`` summing exactly to ``total`` (largest remainders)."""
    quotas = weights / weights.sum() * total
    sizes: IndexArray = np.floor(quotas).astype(np.int64)
    shortfall = total - int(sizes.sum())
    if shortfall > 0:
        sizes[np.argsort(sizes - quotas, kind="stable")[:shortfall]] += 1
    return sizes
