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

# Bidi embeddings/overrides/isolates and marks, zero-width characters and joiners, invisible separators and operators,
# line/paragraph separators, the soft hyphen, Hangul and Mongolian fillers, interlinear annotation marks, the BOM and
# the tag characters: each can hide or reorder what a reader sees.
HIDDEN_CONTROLS = re.compile("[\u00ad\u061c\u115f\u1160\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069\u3164"
                             "\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]")


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


def query_value(value: str) -> str:
    """Return ``value`` encoded for a URL's query string. Document ids go there, never into the path: an id such as
    ``../../auth/logout`` in a path would make its own link point elsewhere on the site."""
    return quote(value, safe="")


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True,
                                                                                       default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(visible=visible, number=number, query_value=query_value)
    return env
