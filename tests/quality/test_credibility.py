"""Source credibility: the configured prior per source, its provenance, and the low_credibility rule."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from dctp_tasks.quality.credibility import CredibilityConfig, CredibilityScorer
from tests.conftest import make_table


def score(config: CredibilityConfig, sources: list[str | None]) -> tuple[CredibilityScorer, dict]:
    scorer = CredibilityScorer(config)
    batch = make_table(["x"] * len(sources), source=sources).to_batches()[0]
    return scorer, scorer.score(batch)


def test_each_source_gets_its_prior_and_says_where_it_came_from():
    config = CredibilityConfig(priors={"wiki": 0.9, "forum": 0.2}, default=0.4)
    scorer, out = score(config, ["wiki", "forum", "blog", None])
    np.testing.assert_allclose(out["credibility"], [0.9, 0.2, 0.4, 0.4], rtol=1e-6)
    assert out["credibility"].dtype == np.float32
    assert out["credibility_provenance"].to_pylist() == ["config:priors.wiki", "config:priors.forum",
                                                         "config:default", "config:default"]
    struct = scorer.to_struct(out)
    assert struct.type.field("credibility_provenance").type == "string"
    np.testing.assert_allclose(scorer.quality(out, np.array([None] * 4)), [0.9, 0.2, 0.4, 0.4], rtol=1e-6)


def test_without_priors_every_source_gets_the_default():
    _, out = score(CredibilityConfig(), ["a", "b"])
    np.testing.assert_allclose(out["credibility"], [0.5, 0.5])
    assert out["credibility_provenance"].to_pylist() == ["config:default"] * 2


@pytest.mark.parametrize(("threshold", "removed"), [(None, [False, False, False]), (0.3, [False, True, False]),
                                                    (0.95, [True, True, True])])
def test_low_credibility_removes_sources_below_the_threshold(threshold, removed):
    scorer, out = score(CredibilityConfig(priors={"wiki": 0.9, "forum": 0.2}, low_credibility=threshold),
                        ["wiki", "forum", "blog"])
    rule = scorer.rules[0]
    assert (rule.name, rule.field, rule.op) == ("low_credibility", "credibility", "<")
    assert rule.fails(out["credibility"]).tolist() == removed


@pytest.mark.parametrize("bad", [{"priors": {"web": 1.5}}, {"default": -0.1}, {"prior": {"web": 0.5}}])
def test_out_of_range_or_unknown_settings_are_rejected(bad):
    with pytest.raises(pydantic.ValidationError):
        CredibilityConfig(**bad)


def test_sources_with_enough_expert_labels_take_the_feedback_estimate(tmp_path):
    """Labels published for earlier dates replace the prior of a source with enough of them (provenance
    feedback:n=…); a source with too few keeps its prior; labels published on or after the date are not read."""
    from dctp_tasks.quality.base import ScoringContext
    from dctp_tasks.source_labels import publish_source_labels
    from dctp_tasks.storage import Storage

    storage = Storage(tmp_path.as_uri())
    publish_source_labels(storage, "2026-01-01", {"forum": {"good": 2, "bad": 28}, "wiki": {"good": 3, "bad": 0}})
    publish_source_labels(storage, "2026-01-05", {"forum": {"good": 30, "bad": 0}})
    config = CredibilityConfig(priors={"wiki": 0.9, "forum": 0.6}, feedback_min_labels=20, feedback_prior_strength=10)
    scorer = CredibilityScorer(config)
    context = ScoringContext(storage, "2026-01-03")
    token = scorer.cache_token(context)
    scorer.prepare(context)
    out = scorer.score(make_table(["x"] * 3, source=["forum", "wiki", "blog"]).to_batches()[0])
    np.testing.assert_allclose(out["credibility"], [(2 + 10 * 0.6) / 40, 0.9, 0.5], rtol=1e-6)
    assert out["credibility_provenance"].to_pylist() == ["feedback:n=30", "config:priors.wiki", "config:default"]
    later = ScoringContext(storage, "2026-01-06")
    assert scorer.cache_token(later) != token, "new labels rescore the later dates"
    assert CredibilityScorer(CredibilityConfig(feedback_min_labels=None)).cache_token(context) == ""
