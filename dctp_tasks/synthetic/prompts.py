"""Versioned prompt templates (``include/prompts/{name}.yaml``): render a chunk into a conversation, and parse what
the model wrote back into labelled pairs (or a judge's score).

A template names its ``version``, its ``kind`` (``qa``, ``instruction``, ``judge``), the two ``labels`` that open
each part of a pair (``Q``/``A``), a ``system`` message and a ``user`` message with ``${chunk}`` and ``${n}``
placeholders. The file's digest keys the generation cache, so an edited template always generates anew.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template as _Text

import yaml

from dctp_tasks.config import SyntheticConfig, dctp_home

KINDS = ("qa", "instruction", "judge")
# "Score: 7", "score = 7/10", "**Score:** 7.5": the whole number (never a prefix of "11" or "10.5") and its denominator
_NUMBER = r"(\d+(?:\.\d+)?)(?!\d|\.\d)"
_SCORE = re.compile(rf"\bscore\s*[:=]?\s*[*_]*\s*{_NUMBER}(?:\s*/\s*{_NUMBER})?", re.IGNORECASE)


class TemplateError(ValueError):
    """A prompt template is missing or malformed."""


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    kind: str
    labels: tuple[str, ...]
    system: str
    user: str
    digest: str

    def render(self, **values: object) -> list[dict[str, str]]:
        """Return the chat conversation with the placeholders filled (``chunk``, ``n``; the judge's ``prompt`` and
        ``response``). Values are inserted as text, never read as template syntax."""
        try:
            user = _Text(self.user).substitute({k: str(v) for k, v in values.items()})
        except KeyError as exc:
            raise TemplateError(f"template {self.name} v{self.version} needs a value for {exc}") from exc
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return messages + [{"role": "user", "content": user}]

    def parse_pairs(self, text: str) -> list[tuple[str, str]]:
        """Return the ``(prompt, response)`` pairs the model wrote, in order; a label without its partner is dropped.

        A part runs from its label (``Q:``, ``**Q:**``, ``1. Q:``) to the next label, so answers may span lines;
        a question–answer part (kind ``qa``, asked for in a sentence or two) ends at its first blank line, where
        small models go on with unlabelled chatter.
        """
        first, second = self.labels[:2]
        pattern = re.compile(rf"^[ \t]*(?:\d+[.)][ \t]*)?[*_]*({re.escape(first)}|{re.escape(second)})[*_]*"
                             rf"[ \t]*\d*[ \t]*[:：][*_]*[ \t]*", re.IGNORECASE | re.MULTILINE)
        marks = list(pattern.finditer(text or ""))
        pairs: list[tuple[str, str]] = []
        pending: str | None = None
        for i, mark in enumerate(marks):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
            body = text[mark.end():end].strip()
            if self.kind == "qa":
                body = re.split(r"\n[ \t]*\n", body, maxsplit=1)[0].strip()
            if mark.group(1).lower() == first.lower():
                pending = body
            elif pending is not None:
                pairs.append((pending, body))
                pending = None
        return pairs


def parse_score(text: str | None) -> float:
    """Return the judge's 1-10 score from its reply (``Score: 7``, ``score = 7/10``); NaN when it gave none, or a
    score outside 1-10 or out of another scale (``Score: 11``, ``Score: 3/5``)."""
    match = _SCORE.search(text or "")
    if match is None or match.group(2) is not None and float(match.group(2)) != 10:
        return float("nan")
    score = float(match.group(1))
    return score if 1 <= score <= 10 else float("nan")


def prompts_dir(cfg: SyntheticConfig) -> Path:
    return Path(cfg.prompts_dir).expanduser() if cfg.prompts_dir else dctp_home() / "include" / "prompts"


def load_template(folder: Path, name: str) -> Template:
    """Read and check ``{folder}/{name}.yaml``; every problem is named with the file."""
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise TemplateError(f"prompt template {name!r} not found: {path} (synthetic.templates / default_template "
                            f"name a file under synthetic.prompts_dir)")
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise TemplateError(f"prompt template {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise TemplateError(f"prompt template {path} must be a mapping")
    missing = [key for key in ("version", "kind", "labels", "user") if key not in data]
    if missing:
        raise TemplateError(f"prompt template {path} lacks {missing}")
    if data["kind"] not in KINDS:
        raise TemplateError(f"prompt template {path}: kind {data['kind']!r} is not one of {KINDS}")
    labels = tuple(str(label) for label in data["labels"]) if isinstance(data["labels"], list) else ()
    if len(labels) != (1 if data["kind"] == "judge" else 2) or any(not label.strip() for label in labels) \
            or len({label.lower() for label in labels}) != len(labels):
        raise TemplateError(f"prompt template {path}: labels must be a list of two different names (one for a "
                            f"judge), got {data['labels']!r}")
    if not isinstance(data["user"], str):
        raise TemplateError(f"prompt template {path}: user must be text, got {type(data['user']).__name__}")
    needed = ("chunk", "prompt", "response") if data["kind"] == "judge" else ("chunk", "n")
    found = list(_Text.pattern.finditer(data["user"]))
    if any(m.group("invalid") is not None for m in found):
        raise TemplateError(f"prompt template {path}: a $ in the user message must open a placeholder (${{name}}) "
                            f"or be doubled ($$)")
    named = {m.group("named") or m.group("braced") for m in found} - {None}
    if set(needed) - named:
        raise TemplateError(f"prompt template {path}: the user message must use ${{{'}, ${'.join(needed)}}}")
    if named - set(needed):
        raise TemplateError(f"prompt template {path}: unknown placeholders {sorted(named - set(needed))}; a "
                            f"{data['kind']} template has ${{{'}, ${'.join(needed)}}}")
    return Template(name=name, version=str(data["version"]), kind=data["kind"], labels=labels,
                    system=str(data.get("system") or "").strip(), user=str(data["user"]),
                    digest=hashlib.sha256(raw).hexdigest()[:16])


def template_for(cfg: SyntheticConfig, domain: str | None) -> str:
    """Return the name of the template that generates for ``domain``."""
    return cfg.templates.get(domain or "", cfg.default_template)
