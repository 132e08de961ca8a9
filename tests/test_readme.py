"""The README's `fedloom.simulate` example runs as printed and gives the accuracy it states."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_python_api_example_runs_and_reaches_the_stated_accuracy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    stated = re.search(r"`accuracy (0\.\d+)`", section)
    assert code is not None and stated is not None
    monkeypatch.chdir(tmp_path)  # the example writes runs/digits-mine here
    out = io.StringIO()

    with contextlib.redirect_stdout(out):
        exec(compile(code.group(1), "README.md", "exec"), {"__name__": "readme_example"})

    printed = re.search(r"^accuracy (0\.\d+)$", out.getvalue(), re.M)
    assert printed is not None
    assert float(printed.group(1)) == pytest.approx(float(stated.group(1)), abs=0.02)
    assert (tmp_path / "runs" / "digits-mine" / "metrics.jsonl").exists()
