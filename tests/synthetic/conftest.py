"""A real day for the synthetic stage: AG News articles of four domains (one kept short), scored and decided by the
pipeline's own CPU scorers, and a deterministic OpenAI-compatible server to generate from them."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from dctp_tasks.config import load_config
from dctp_tasks.dedup.near import dedup_near_day
from dctp_tasks.quality.decide import decide_day
from dctp_tasks.quality.scoring import score_day
from dctp_tasks.storage import Storage
from tests.conftest import stage_dedup_input, unavailable
from tests.synthetic.llm_server import LLMServer

DAG = "dctp_daily"
DT = "2026-03-02"
DOMAINS = {"1": "world", "2": "sports", "3": "business", "4": "science"}
SIZES = {"world": 60, "sports": 60, "business": 60, "science": 12}
"""Rows per domain: science is the domain the day is short of."""
CPU_SCORERS = {"heuristics": {}, "language": {}, "pii": {"redact": True}, "credibility": {}}


def settings(**overrides) -> dict:
    """Test config: CPU scorers only, no classifiers, generation through the test server, every domain raised to
    half the largest."""
    return {"quality.scorers": CPU_SCORERS, "quality.classifiers": {}, "synthetic.min_share_of_largest": 0.5,
            # news descriptions run 30-60 words: Gopher's 50-word floor is for web pages
            "quality.thresholds": {"heuristics.too_few_words": 10},
            "synthetic.generator": {"backend": "openai", "model": "test-model", "batch_size": 2, "max_retries": 1},
            "synthetic.shift_min_rows": 1000, **overrides}


def ag_news_rows(shared: Path) -> list[tuple]:
    """Return ``(doc_id, text, created_at, domain)`` rows: the first articles of each AG News class."""
    path = shared / "ag_news" / "test.csv"
    if not path.is_file():
        unavailable(f"AG News slice missing at {path}")
    taken = {d: 0 for d in SIZES}
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for i, (label, title, description) in enumerate(csv.reader(handle)):
            domain = DOMAINS.get(label)
            if domain is None or taken[domain] >= SIZES[domain]:
                continue
            taken[domain] += 1
            text = f"{title.strip()}. {description.replace('#39;', chr(39)).replace('quot;', '').strip()}"
            rows.append((f"news/{i}", text, None, domain))
    return rows


@pytest.fixture(scope="session")
def news_rows(shared_data) -> list[tuple]:
    return ag_news_rows(shared_data)


@pytest.fixture(scope="session")
def decided_template(tmp_path_factory, news_rows):
    """The decided AG News day, built once: tests copy it (``copy_day``) instead of scoring it again."""
    root = tmp_path_factory.mktemp("decided-day") / "data"
    _, _, decided = decided_day(root, news_rows)
    return root, decided


def copy_day(template, root: Path):
    """Return a storage at ``root`` holding a copy of the decided day, and the decide stage's result."""
    source, decided = template
    shutil.copytree(source, root)
    return Storage(root.as_uri()), decided


@pytest.fixture
def llm():
    server = LLMServer()
    yield server
    server.close()


@pytest.fixture
def fast_backoff(monkeypatch):
    from dctp_tasks.synthetic import generators

    monkeypatch.setattr(generators, "BACKOFF_BASE_SECONDS", 0.01)


def decided_day(root: Path, rows: list[tuple], dt: str = DT, **overrides):
    """Publish ``rows`` as the day's deduplicated input; sign it (near-dedup history), score and decide it."""
    storage = Storage(root.as_uri())
    config = load_config(overrides=settings(**overrides))
    stage_dedup_input(storage, DAG, dt, "dedup_semantic", rows)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dedup_near_day(storage, config, DAG, dt, input_stage="dedup_semantic")  # writes state/minhash/dt=D
    score_day(storage, config, DAG, dt, "cpu", input_stage="dedup_semantic")
    decided = decide_day(storage, config, DAG, dt, input_stage="score")
    return storage, config, decided
