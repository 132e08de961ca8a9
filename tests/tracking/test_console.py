"""Terminal output: plain lines off a terminal, progress bars on one, summary table."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from fedloom.tracking import RoundProgress, format_bytes, render_summary_table

ESC = "\x1b"


def _console(*, terminal: bool = False) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=120), buffer


@pytest.mark.parametrize(
    ("num_bytes", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1500, "1.5 kB"),
        (2_000_000, "2.0 MB"),
        (999_999_999, "1.0 GB"),
        (3.2e12, "3.2 TB"),
    ],
)
def test_format_bytes(num_bytes: float, text: str) -> None:
    assert format_bytes(num_bytes) == text


def test_non_terminal_prints_plain_lines() -> None:
    console, buffer = _console()
    with RoundProgress(2, console=console) as prog:
        prog.start_round(1, num_clients=3)
        for _ in range(3):
            prog.advance()
        prog.end_round(
            1,
            {
                "loss": 0.5,
                "accuracy": 0.75,
                "f1_macro": 0.5,
                "bytes_up": 1500,
                "bytes_down": 2_000_000,
                "seconds": 1.3,
            },
        )
        prog.start_round(2, num_clients=3)
        # Not evaluated; numpy scalars format like Python numbers.
        prog.end_round(
            2, {"train_loss": np.float32(0.75), "bytes_up": np.int64(10), "seconds": 0.5}
        )
    assert buffer.getvalue().splitlines() == [
        "round 1/2 | loss 0.5000 | accuracy 0.7500 | f1_macro 0.5000 | up 1.5 kB | down 2.0 MB"
        " | 1.3 s",
        "round 2/2 | train_loss 0.7500 | up 10 B | 0.5 s",
    ]


def test_quiet_prints_nothing_even_on_a_terminal() -> None:
    console, buffer = _console(terminal=True)
    with RoundProgress(1, quiet=True, console=console) as prog:
        assert not prog.interactive
        prog.start_round(1, num_clients=2)
        prog.advance(2)
        prog.end_round(1, {"loss": 0.25, "seconds": 2.0})
    assert buffer.getvalue() == ""


def test_terminal_shows_bars_and_keeps_summary_lines() -> None:
    console, buffer = _console(terminal=True)
    with RoundProgress(2, console=console) as prog:
        assert prog.interactive
        for r in (1, 2):
            prog.start_round(r, num_clients=4)
            prog.advance(4)
            prog.end_round(r, {"accuracy": 0.5 * r, "seconds": 0.1})
    out = buffer.getvalue()
    assert "round 1/2 | accuracy 0.5000 | 0.1 s" in out
    assert "round 2/2 | accuracy 1.0000 | 0.1 s" in out


def test_summary_table_lists_scalar_metrics_and_run_facts() -> None:
    console, buffer = _console()
    render_summary_table(
        {
            "final": {"accuracy": 0.8125, "f1_macro": 0.5, "f1_per_class": [0.5, 0.5], "auc": None},
            "config": {"learning_rate": 0.125},
            "bytes_up": 1_500_000,
            "fedloom_version": "0.1.0",
            "rounds": 10,
            "wall_seconds": 12.34,
            "out_dir": "runs/demo",
        },
        console=console,
    )
    out = buffer.getvalue()
    assert ESC not in out
    for text in ("accuracy", "0.8125", "f1_macro", "bytes_up", "1.5 MB", "rounds", "12.3 s"):
        assert text in out
    assert "runs/demo" in out
    for absent in ("f1_per_class", "auc", "learning_rate", "fedloom_version"):
        assert absent not in out
