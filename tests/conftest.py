"""Shared fixtures: a tiny Llama built in the test (no downloads), saved as a model directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from livelm.model import LoadedModel, load_model
from tests.gguf_writer import save_tiny_model_dir


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVELM_CACHE", str(tmp_path / "livelm-cache"))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`).

    The tiny model's 64-wide matmuls are too small to split: a second thread only adds
    synchronisation. On a busy 2-core machine, many small steps ran up to 10x slower on two.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-wide Llama and its byte-level BPE tokenizer, as a HF directory."""
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def tiny(tiny_model_dir: Path) -> LoadedModel:
    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture
def news_lines() -> list[str]:
    return [
        "Storm hits the coast as residents leave their homes.",
        "Markets rise after the central bank holds rates steady.",
        "New vaccine shows promise in early trials, researchers say.",
        "The team wins the final after a late goal in extra time.",
        "Senate passes the budget bill after a long night of debate.",
        "Scientists find water ice near the moon's south pole.",
        "City council votes to expand bike lanes downtown.",
        "Actor returns to the stage in a new play about family.",
    ]
