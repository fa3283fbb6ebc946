"""HTML pages from Jinja templates that escape everything: a document is untrusted input.

Text is never marked safe. Beyond HTML escaping, characters that change how the text around them is shown —
bidirectional overrides and isolates, zero-width characters — are made visible as ``⟨U+202E⟩`` markers, so a
document cannot disguise what it says; long lines wrap and long documents scroll inside their box.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")

# Bidi embeddings/overrides/isolates and marks, zero-width and invisible separators, the BOM.
HIDDEN_CONTROLS = re.compile("[\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def visible(text: str | None) -> Markup:
    """Return ``text`` HTML-escaped, with its invisible direction and width controls shown as markers."""
    escaped = str(escape(text or ""))
    return Markup(HIDDEN_CONTROLS.sub(lambda m: f'<span class="ctl">⟨U+{ord(m.group()):04X}⟩</span>', escaped))


def number(value: object, digits: int = 3) -> str:
    """Format a score for a table cell: ``-`` for a missing or non-finite value."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def doc_path(doc_id: str) -> str:
    """Return the URL path segment of a document id (ids hold ``/`` and ``:``, and any other character)."""
    return quote(doc_id, safe="/:@")


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True,
                                                                                       default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(visible=visible, number=number, doc_path=doc_path)
    return env
