from __future__ import annotations

from pathlib import Path

import pytest

from fedloom.transport.certs import create_certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    create_certs(folder, 8)
    return folder
