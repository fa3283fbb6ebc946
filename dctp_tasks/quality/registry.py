"""Build the configured scorers by name, and check a quality config's names before any data is read.

Built-in scorers live in this package, one module each; a trained classifier (``dctp train-scorer``) runs as
scorer ``classifier_{name}``. Modules are imported on demand, so a config that does not use a scorer never imports
its dependencies.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from dctp_tasks.config import QualityConfig
    from dctp_tasks.quality.base import Rule, Scorer

#: scorer name -> (module, scorer class, config class)
BUILTIN: dict[str, tuple[str, str, str]] = {
    "heuristics": ("dctp_tasks.quality.heuristics", "HeuristicsScorer", "HeuristicsConfig"),
    "language": ("dctp_tasks.quality.language", "LanguageQualityScorer", "LanguageQualityConfig"),
    "pii": ("dctp_tasks.quality.pii", "PiiScorer", "PiiConfig"),
    "perplexity": ("dctp_tasks.quality.perplexity", "PerplexityScorer", "PerplexityConfig"),
    "toxicity": ("dctp_tasks.quality.toxicity", "ToxicityScorer", "ToxicityConfig"),
    "relevance": ("dctp_tasks.quality.relevance", "RelevanceScorer", "RelevanceConfig"),
    "credibility": ("dctp_tasks.quality.credibility", "CredibilityScorer", "CredibilityConfig"),
}
CLASSIFIER = ("dctp_tasks.quality.classifier", "ClassifierScorer", "ClassifierConfig")
CLASSIFIER_PREFIX = "classifier_"
#: Reason of rows whose composite quality is below ``quality.min_quality``.
LOW_QUALITY = "low_quality"


@cache
def _load(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def scorer_settings(quality: QualityConfig) -> list[tuple[str, tuple[str, str, str], dict[str, Any]]]:
    """Return ``(scorer name, (module, class, config class), settings)`` of every enabled scorer, in order."""
    out = []
    for name, settings in quality.scorers.items():
        if name not in BUILTIN:
            known = ", ".join(sorted(BUILTIN))
            raise ValueError(f"quality.scorers: unknown scorer {name!r}; built-in scorers are {known} "
                             f"(trained classifiers go under quality.classifiers)")
        settings = dict(settings or {})
        if settings.pop("enabled", True):
            out.append((name, BUILTIN[name], settings))
    for name, settings in quality.classifiers.items():
        settings = dict(settings or {})
        if settings.pop("enabled", True):
            out.append((CLASSIFIER_PREFIX + name, CLASSIFIER, {"name": name, **settings}))
    return out


def scorer_configs(quality: QualityConfig) -> dict[str, Any]:
    """Return each enabled scorer's validated settings object by scorer name, in order."""
    configs = {}
    for name, (module, _, cfg_cls), settings in scorer_settings(quality):
        try:
            configs[name] = _load(module, cfg_cls).model_validate(settings)
        except ValidationError as exc:
            raise ValueError(f"quality.scorers.{name}: {exc}") from exc
    return configs


def build_scorers(quality: QualityConfig) -> list[Scorer]:
    """Return the enabled scorers, each built from its validated settings (no model is loaded yet)."""
    specs = {name: spec for name, spec, _ in scorer_settings(quality)}
    return [_load(specs[name][0], specs[name][1])(cfg) for name, cfg in scorer_configs(quality).items()]


def rule_keys(scorers: list[Scorer]) -> dict[str, tuple[Scorer, Rule]]:
    """Return every rule by its config key ``{scorer}.{rule}``."""
    return {f"{s.name}.{r.name}": (s, r) for s in scorers for r in s.rules}


def check_quality_config(quality: QualityConfig) -> None:
    """Raise ``ValueError`` naming any unknown scorer, bad scorer setting, unknown rule key or weight."""
    if not quality.enabled:
        return
    scorers = build_scorers(quality)
    keys = rule_keys(scorers)
    names = {s.name for s in scorers}
    overrides = [("quality.thresholds", quality.thresholds)]
    overrides += [(f"quality.domain_thresholds.{d}", t) for d, t in quality.domain_thresholds.items()]
    for where, thresholds in overrides:
        unknown = sorted(set(thresholds) - set(keys))
        if unknown:
            raise ValueError(f"{where}: unknown rule {', '.join(unknown)}; rules of the enabled scorers: "
                             f"{', '.join(sorted(keys))}")
    unknown = sorted(set(quality.weights) - names)
    if unknown:
        raise ValueError(f"quality.weights: {', '.join(unknown)} is not an enabled scorer "
                         f"({', '.join(sorted(names))})")
    bad = {k: w for k, w in quality.weights.items() if w < 0}
    if bad:
        raise ValueError(f"quality.weights must be >= 0; got {bad}")
