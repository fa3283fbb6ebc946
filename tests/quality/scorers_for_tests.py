"""Two small real scorers for the framework's tests: one CPU scorer, one "model" scorer that counts its calls."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from dctp_tasks.quality.base import Field, Rule, Scorer


class LengthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    full_at: int = 100


class LengthScorer(Scorer):
    """``chars``: characters of the text; quality grows with length up to ``full_at``."""

    name = "length"

    def __init__(self, config: LengthConfig) -> None:
        self.config = config
        self.fields = [Field("chars", pa.int32(), "characters")]
        self.rules = [Rule("too_short", "chars", "<", 20, "test rule: fewer than 20 characters")]

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        return {"chars": pc.utf8_length(batch.column("text")).to_numpy(zero_copy_only=False).astype(np.int32)}

    def quality(self, scores: dict[str, np.ndarray], domains: np.ndarray) -> np.ndarray:
        return np.minimum(scores["chars"] / self.config.full_at, 1.0)


class XModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    letter: str = "x"


class XModelScorer(Scorer):
    """``share``: the share of characters equal to ``letter``; a stand-in for a model, counting its calls."""

    name = "xmodel"
    gpu = True
    calls = 0

    def __init__(self, config: XModelConfig) -> None:
        self.config = config
        self.fields = [Field("share", pa.float32(), "share of the letter"), Field("label", pa.string(), "a label")]
        self.rules = [Rule("too_many_x", "share", ">", 0.3, "test rule: more than 30 % x"),
                      Rule("any_x", "share", ">", None, "test rule, off by default")]

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        type(self).calls += 1
        texts = batch.column("text")
        count = pc.count_substring(texts, self.config.letter).to_numpy(zero_copy_only=False)
        length = np.maximum(pc.utf8_length(texts).to_numpy(zero_copy_only=False), 1)
        share = (count / length).astype(np.float32)
        return {"share": share, "label": np.where(share > 0, "has", "none").astype(object)}

    def quality(self, scores: dict[str, np.ndarray], domains: np.ndarray) -> np.ndarray:
        return 1.0 - scores["share"]


def use_test_scorers(monkeypatch) -> None:
    """Register ``length`` and ``xmodel`` as built-in scorers for one test."""
    from dctp_tasks.quality import registry

    monkeypatch.setitem(registry.BUILTIN, "length", ("tests.quality.scorers_for_tests", "LengthScorer",
                                                      "LengthConfig"))
    monkeypatch.setitem(registry.BUILTIN, "xmodel", ("tests.quality.scorers_for_tests", "XModelScorer",
                                                      "XModelConfig"))
