"""Candidates: the model's outputs turned into records, one per generated pair, each carrying its provenance.

Every pair becomes a row (``synthetic = true``, source ``synthetic``, the seed's domain and language, lineage parents
``[seed doc_id, chunk id]``) with a ``generation`` struct: the generator and its version, the template and its
version, the decoding settings, and the measurements the safeguards read. An output with no parsable pair still
becomes one row, so the ledger accounts for every call the plan paid for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

import dctp_tasks
from dctp_tasks.records import LINEAGE_TYPE, SYNTHETIC_SOURCE, content_hashes, params_hash, sha1_hex
from dctp_tasks.synthetic.generators import Generation
from dctp_tasks.synthetic.prompts import Template
from dctp_tasks.synthetic.seeds import Chunk

SOURCE = SYNTHETIC_SOURCE
"""The ``source`` of every generated row: its own, so no real source's credibility or weights ever count it."""

# why a generated pair is malformed (the detail of its ``synthetic_malformed`` ledger row)
NO_PAIR = "no_pair"
EMPTY = "empty_answer"
TRUNCATED = "truncated"

GENERATION_TYPE = pa.struct([
    ("backend", pa.string()),
    ("model", pa.string()),
    ("model_version", pa.string()),
    ("template", pa.string()),
    ("template_version", pa.string()),
    ("decoding", pa.string()),
    ("seed_doc_id", pa.string()),
    ("chunk_id", pa.string()),
    ("finish_reason", pa.string()),
    ("malformed", pa.string()),
    ("judge_model", pa.string()),
    ("judge_score", pa.float32()),
    ("grounding", pa.float32()),
    ("seed_similarity", pa.float32()),
    ("near_similarity", pa.float32()),
    ("near_copy_of", pa.string()),
    ("semantic_similarity", pa.float32()),
    ("semantic_copy_of", pa.string()),
    ("reward_z", pa.float32()),
])
GENERATION_FIELD = pa.field("generation", GENERATION_TYPE)
"""Added column: how a synthetic row was made and what the safeguards measured (null on real rows)."""


@dataclass(frozen=True)
class Produced:
    """Where a generation came from: the model, the template, the settings."""

    identity: dict[str, str]
    template: Template
    decoding: dict


def build_candidates(chunks: list[Chunk], generations: list[Generation], produced: list[Produced], dt: str,
                     per_chunk: int, limits: dict[str, int]) -> tuple[pa.Table, int]:
    """Return the candidate rows of ``generations`` (one per chunk) and how many parsed pairs the plan had no room
    for. Each chunk gives at most ``per_chunk`` pairs; each domain at most ``limits[domain]`` rows."""
    rows: dict[str, list] = {name: [] for name in ("doc_id", "prompt", "response", "domain", "lang", "chunk_id",
                                                   "seed_doc_id", "chunk", "malformed", "finish_reason", "made_by")}
    taken: dict[str, int] = {}
    surplus = 0
    for chunk, gen, made in zip(chunks, generations, produced, strict=True):
        parsed = made.template.parse_pairs(gen.text)
        pairs = parsed[:per_chunk]
        surplus += len(parsed) - len(pairs)  # more pairs than were asked for
        room = limits.get(chunk.domain, 0) - taken.get(chunk.domain, 0)
        if room <= 0:
            surplus += max(len(pairs), 1)
            continue
        if not pairs:
            entries = [(gen.text.strip(), "", TRUNCATED if gen.finish_reason == "length" else NO_PAIR)]
        else:
            entries = []
            for i, (prompt, response) in enumerate(pairs):
                why = None
                if not prompt or not response:
                    why = EMPTY
                elif gen.finish_reason == "length" and i == len(parsed) - 1:
                    why = TRUNCATED  # the model was still writing its last pair (kept or not) at the token limit
                entries.append((prompt, response, why))
        surplus += max(0, len(entries) - room)
        for index, (prompt, response, why) in enumerate(entries[:room]):
            key = json.dumps([made.identity, made.template.digest, made.decoding, chunk.chunk_id, index, prompt,
                              response], sort_keys=True, ensure_ascii=False)
            rows["doc_id"].append(f"{SOURCE}/{sha1_hex(key.encode())[:24]}")
            rows["prompt"].append(prompt)
            rows["response"].append(response)
            rows["domain"].append(chunk.domain)
            rows["lang"].append(chunk.lang)
            rows["chunk_id"].append(chunk.chunk_id)
            rows["seed_doc_id"].append(chunk.seed_id)
            rows["chunk"].append(chunk.text)
            rows["malformed"].append(why)
            rows["finish_reason"].append(gen.finish_reason)
            rows["made_by"].append(made)
        taken[chunk.domain] = taken.get(chunk.domain, 0) + min(len(entries), room)
    return _records(rows, dt), surplus


def _records(rows: dict[str, list], dt: str) -> pa.Table:
    n = len(rows["doc_id"])
    texts = [f"{p}\n\n{r}" if r else p for p, r in zip(rows["prompt"], rows["response"], strict=True)]
    created = datetime.fromisoformat(dt).replace(tzinfo=UTC)
    step = {"name": "generate_synthetic", "version": dctp_tasks.__version__, "params_hash": ""}
    lineage = pa.array([{"parents": [seed, chunk], "steps": [{**step, "params_hash": params_hash(m.decoding)}]}
                        for seed, chunk, m in zip(rows["seed_doc_id"], rows["chunk_id"], rows["made_by"],
                                                  strict=True)], LINEAGE_TYPE)
    generation = pa.array([{
        "backend": m.identity.get("backend"), "model": m.identity.get("model"),
        "model_version": m.identity.get("version"), "template": m.template.name,
        "template_version": m.template.version, "decoding": json.dumps(m.decoding, sort_keys=True),
        "seed_doc_id": seed, "chunk_id": chunk, "finish_reason": finish, "malformed": why,
    } for m, seed, chunk, finish, why in zip(rows["made_by"], rows["seed_doc_id"], rows["chunk_id"],
                                             rows["finish_reason"], rows["malformed"], strict=True)],
        GENERATION_TYPE)
    text = pa.array(texts, pa.string())
    return pa.table({
        "doc_id": pa.array(rows["doc_id"], pa.string()),
        "text": text,
        "prompt": pa.array(rows["prompt"], pa.string()),
        "response": pa.array(rows["response"], pa.string()),
        "source": pa.array([SOURCE] * n, pa.string()),
        "domain": pa.array(rows["domain"], pa.string()),
        "created_at": pa.array([created] * n, pa.timestamp("us", tz="UTC")),
        "meta": pa.array(["{}"] * n, pa.string()),
        "dt": pa.array([dt] * n, pa.string()),
        "synthetic": pa.array(np.ones(n, dtype=bool)),
        "sampling_weight": pa.array(np.ones(n), pa.float64()),
        "lineage": lineage,
        "lang": pa.array(rows["lang"], pa.string()),
        "lang_score": pa.nulls(n, pa.float32()),
        "content_hash": content_hashes(text),
        "chunk": pa.array(rows["chunk"], pa.string()),
        "generation": generation,
    })


def set_generation(table: pa.Table, **values: np.ndarray | list) -> pa.Table:
    """Return ``table`` with fields of its ``generation`` struct replaced by ``values`` (field name -> per row)."""
    struct = table.column("generation").combine_chunks()
    arrays = []
    for i, f in enumerate(GENERATION_TYPE):
        if f.name in values:
            data = values[f.name]
            if isinstance(data, np.ndarray) and data.dtype.kind == "f":
                arrays.append(pa.array(data, f.type, mask=np.isnan(data)))
            else:
                arrays.append(pa.array(list(data), f.type))
        else:
            arrays.append(struct.field(i))
    index = table.schema.get_field_index("generation")
    return table.set_column(index, GENERATION_FIELD, pa.StructArray.from_arrays(arrays, fields=list(GENERATION_TYPE)))
