"""Shared fixtures. ``shared_data`` locates the project's data folder (``../shared/data`` next to
the repo, or ``$AGENTRL_SHARED``) and skips the test when a clone does not have it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path | None:
    for candidate in (os.environ.get("AGENTRL_SHARED"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "corpus" / "wiki_multihop.jsonl.gz").is_file():
            return Path(candidate)
        if candidate and (Path(candidate) / "data" / "corpus" / "wiki_multihop.jsonl.gz").is_file():
            return Path(candidate) / "data"
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data_dir()
    if path is None:
        pytest.skip("shared data not found: needs ../shared/data next to the repo or $AGENTRL_SHARED (corpus/, qa/)")
    return path


@pytest.fixture(scope="session")
def bm25_index(shared_data, tmp_path_factory) -> Path:
    """A real BM25 index over the first 300 paragraphs of the shipped corpus (~1 s)."""
    from agentrl.retrieval.index import build_index

    out = tmp_path_factory.mktemp("bm25_index")
    build_index(shared_data / "corpus" / "wiki_multihop.jsonl.gz", out, kind="bm25", limit=300, show_progress=False)
    return out
