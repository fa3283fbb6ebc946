"""Map one raw input row onto the record fields, with the type checks that decide quarantine."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson

from dctp_tasks.config import SourceConfig
from dctp_tasks.records import derive_doc_id


class RowError(ValueError):
    """A row that cannot become a record; ``reason`` is the ledger reason."""

    def __init__(self, reason: str, detail: str, doc_id: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.doc_id = doc_id


@dataclass(frozen=True)
class Mapper:
    """Maps raw rows of one source; built once per source from its ``SourceConfig``."""

    source: str
    fields: dict[str, list[str]]
    defaults: dict[str, str]
    join_with: str

    @classmethod
    def for_source(cls, source: str, config: SourceConfig) -> Mapper:
        return cls(source, config.field_map(), dict(config.defaults), config.join_with)

    def map(self, data: dict[str, Any], file: str, line: int) -> dict[str, Any]:
        """Return the record fields for ``data``, or raise ``RowError``."""
        source_id = self._id(data)
        doc_id_hint = f"{self.source}/{source_id}" if source_id else None
        text = self._text(data, doc_id_hint)
        prompt = self._optional_str(data, "prompt", doc_id_hint)
        response = self._optional_str(data, "response", doc_id_hint)
        if text is None:
            if prompt and response:
                text = f"{prompt}{self.join_with}{response}"  # instruction data: rendered prompt + response
            else:
                columns = "+".join(self.fields["text"])
                raise RowError("missing_text", f"no text: column(s) {columns!r} absent or null", doc_id_hint)
        if not text.strip():
            raise RowError("missing_text", "text is empty or whitespace", doc_id_hint)
        domain = self._optional_str(data, "domain", doc_id_hint) or self.defaults.get("domain")
        created_at = self._timestamp(data, doc_id_hint)
        return {
            "doc_id": derive_doc_id(self.source, source_id, text),
            "text": text,
            "prompt": prompt,
            "response": response,
            "source": self.source,
            "domain": domain,
            "created_at": created_at,
            "meta": self._meta(data, file, line),
        }

    def _first(self, data: dict[str, Any], name: str) -> tuple[str | None, Any]:
        for column in self.fields.get(name, ()):
            if column in data and data[column] is not None:
                return column, data[column]
        return None, None

    def _id(self, data: dict[str, Any]) -> str | None:
        column, value = self._first(data, "doc_id")
        if value is None:
            return self.defaults.get("doc_id")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise RowError("wrong_type",
                           f"id column {column!r} must be a string or integer, got {type(value).__name__}")
        value = str(value).strip()
        return value or None

    def _text(self, data: dict[str, Any], doc_id: str | None) -> str | None:
        parts = []
        for column in self.fields["text"]:
            value = data.get(column)
            if value is None:
                continue
            if not isinstance(value, str):
                raise RowError("wrong_type", f"text column {column!r} must be a string, got {type(value).__name__}",
                               doc_id)
            if value.strip():
                parts.append(value)
        return self.join_with.join(parts) if parts else None

    def _optional_str(self, data: dict[str, Any], name: str, doc_id: str | None) -> str | None:
        column, value = self._first(data, name)
        if value is None:
            return self.defaults.get(name)
        if not isinstance(value, str):
            raise RowError("wrong_type", f"{name} column {column!r} must be a string, got {type(value).__name__}",
                           doc_id)
        return value

    def _timestamp(self, data: dict[str, Any], doc_id: str | None) -> datetime | None:
        column, value = self._first(data, "created_at")
        if value is None or value == "":
            return None
        try:
            return to_utc(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise RowError("bad_timestamp", f"{column!r}={str(value)[:40]!r}: {exc}", doc_id) from None

    def _meta(self, data: dict[str, Any], file: str, line: int) -> str:
        used = {c for cols in self.fields.values() for c in cols}
        meta: dict[str, Any] = {k: v for k, v in data.items() if k not in used}
        _, given = self._first(data, "meta")
        if isinstance(given, dict):
            meta.update(given)
        elif isinstance(given, str) and given:
            try:
                parsed = orjson.loads(given)
                meta.update(parsed if isinstance(parsed, dict) else {"meta": parsed})
            except orjson.JSONDecodeError:
                meta["meta"] = given
        meta["_file"] = file
        meta["_line"] = line
        return orjson.dumps(meta, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str).decode()


def to_utc(value: Any) -> datetime:
    """Parse an ISO-8601 string, epoch seconds, a date or a datetime into an aware UTC datetime."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a timestamp")
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, (int, float)):
        parsed = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str):
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    else:
        raise TypeError(f"unsupported timestamp type {type(value).__name__}")
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
