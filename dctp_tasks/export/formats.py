"""Training formats of a materialized view: which rows each can express, and each batch's records as JSON lines.

``parquet`` keeps the curated columns as they are; ``jsonl`` is the same record as JSON; ``chat`` (OpenAI
messages), ``sharegpt`` and ``alpaca`` are built from prompt/response rows; ``text`` is the plain document for
pre-training. A row a format cannot express (a plain document in ``chat``) is counted under ``no_prompt_response``
or ``empty_text`` and never written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

FORMATS = ("parquet", "jsonl", "chat", "sharegpt", "alpaca", "text")
INSTRUCTION_FORMATS = ("chat", "sharegpt", "alpaca")
COMPRESSIONS = ("zstd", "gzip", "none")

# JSON allows U+2028/U+2029 raw inside strings, but Python's str.splitlines() and JavaScript line readers break a
# record there: escape them so one record is always one line. They occur only inside strings, so bytes can be
# replaced directly.
_LINE_SEPARATORS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


@dataclass(frozen=True)
class FormatOptions:
    """How records are shaped, beyond the format itself."""

    system_prompt: str | None = None
    """A system turn put first in every conversation (``chat``, ``sharegpt``; ``system`` in ``alpaca``)."""
    assistant_weight: float | str | None = None
    """``chat``: a ``weight`` on the assistant turn: a constant (OpenAI's 0/1), or ``"sampling_weight"`` for each
    row's weight; ``None`` writes no weight."""
    with_weights: bool = False
    """Add each row's ``sampling_weight`` to every JSON record (``parquet`` and ``jsonl`` always carry it)."""

    def __post_init__(self) -> None:
        weight = self.assistant_weight
        if isinstance(weight, str) and weight != "sampling_weight":
            raise ValueError(f"assistant weight must be a number or 'sampling_weight', got {weight!r}")


def check_format(fmt: str, compression: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")


def file_extension(fmt: str, compression: str) -> str:
    if fmt == "parquet":
        return "parquet"
    return {"zstd": "jsonl.zst", "gzip": "jsonl.gz", "none": "jsonl"}[compression]


def needed_columns(fmt: str, options: FormatOptions, schema: pa.Schema) -> list[str] | None:
    """Return the columns a format reads (``None``: all of them), plus ``split`` and ``sampling_weight``."""
    if fmt in ("parquet", "jsonl"):
        return None
    columns = ["prompt", "response"] if fmt in INSTRUCTION_FORMATS else ["doc_id", "text"]
    return [c for c in [*columns, "split", "sampling_weight"] if c in schema.names]


def expressible(table: pa.Table, fmt: str) -> tuple[pa.Array, str | None]:
    """Return the mask of rows ``fmt`` can express and the reason the others are counted under."""
    if fmt in INSTRUCTION_FORMATS:
        return pc.and_(_non_blank(table.column("prompt")), _non_blank(table.column("response"))), "no_prompt_response"
    if fmt == "text":
        return _non_blank(table.column("text")), "empty_text"
    return pa.array(np.ones(table.num_rows, dtype=bool)), None


def _non_blank(column: pa.ChunkedArray) -> pa.Array:
    return pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0), False)


def json_lines(table: pa.Table, fmt: str, options: FormatOptions) -> bytes:
    """Return the records of ``table`` (all expressible) as UTF-8 JSON lines, each ending in a newline."""
    if table.num_rows == 0:
        return b""
    weights = (table.column("sampling_weight").fill_null(1.0).to_pylist()
               if options.with_weights or options.assistant_weight == "sampling_weight" else None)
    records = _RECORDS[fmt](table, options, weights)
    if options.with_weights and fmt != "jsonl":
        for record, weight in zip(records, weights, strict=True):
            record["sampling_weight"] = weight
    data = b"\n".join(map(orjson.dumps, records)) + b"\n"
    for raw, escaped in _LINE_SEPARATORS:
        data = data.replace(raw, escaped)
    return data


def _chat(table: pa.Table, options: FormatOptions, weights: list[float] | None) -> list[dict]:
    system = [{"role": "system", "content": options.system_prompt}] if options.system_prompt is not None else []
    weight = options.assistant_weight
    prompts, responses = table.column("prompt").to_pylist(), table.column("response").to_pylist()
    if weight is None:
        return [{"messages": [*system, {"role": "user", "content": p}, {"role": "assistant", "content": r}]}
                for p, r in zip(prompts, responses, strict=True)]
    per_row = weights if weight == "sampling_weight" else [weight] * len(prompts)
    return [{"messages": [*system, {"role": "user", "content": p},
                          {"role": "assistant", "content": r, "weight": w}]}
            for p, r, w in zip(prompts, responses, per_row, strict=True)]


def _sharegpt(table: pa.Table, options: FormatOptions, weights: list[float] | None) -> list[dict]:
    system = [{"from": "system", "value": options.system_prompt}] if options.system_prompt is not None else []
    return [{"conversations": [*system, {"from": "human", "value": p}, {"from": "gpt", "value": r}]}
            for p, r in zip(table.column("prompt").to_pylist(), table.column("response").to_pylist(), strict=True)]


def _alpaca(table: pa.Table, options: FormatOptions, weights: list[float] | None) -> list[dict]:
    system = {"system": options.system_prompt} if options.system_prompt is not None else {}
    return [{"instruction": p, "input": "", "output": r, **system}
            for p, r in zip(table.column("prompt").to_pylist(), table.column("response").to_pylist(), strict=True)]


def _text(table: pa.Table, options: FormatOptions, weights: list[float] | None) -> list[dict]:
    return [{"id": i, "text": t}
            for i, t in zip(table.column("doc_id").to_pylist(), table.column("text").to_pylist(), strict=True)]


def _record(table: pa.Table, options: FormatOptions, weights: list[float] | None) -> list[dict]:
    return table.to_pylist()


_RECORDS = {"chat": _chat, "sharegpt": _sharegpt, "alpaca": _alpaca, "text": _text, "jsonl": _record}
