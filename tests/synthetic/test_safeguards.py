"""Candidates and safeguards: generated outputs turned into rows with their provenance, the measuring helpers, and
``decide_candidates`` on hand-built candidate tables — each reason firing on what it guards against, and not on
what it must let through."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dctp_tasks.config import NearDedupConfig, SyntheticConfig
from dctp_tasks.dedup.minhash import band_keys
from dctp_tasks.dedup.near import lsh_params
from dctp_tasks.synthetic.candidates import (
    EMPTY,
    GENERATION_TYPE,
    NO_PAIR,
    SOURCE,
    TRUNCATED,
    Produced,
    build_candidates,
    set_generation,
)
from dctp_tasks.synthetic.generators import Generation
from dctp_tasks.synthetic.prompts import load_template
from dctp_tasks.synthetic.safeguards import (
    COPIES_SEED,
    DISTRIBUTION_SHIFT,
    LOW_QUALITY,
    MALFORMED,
    OVER_CAP,
    SUSPECT_REWARD,
    RealDomain,
    RewardBasis,
    decide_candidates,
    max_cosine,
    nearest_in_history,
    seed_similarity,
    signatures,
)
from dctp_tasks.synthetic.seeds import Chunk

PROMPTS = Path(__file__).resolve().parents[2] / "include" / "prompts"
NEAR = NearDedupConfig()
DIM = 32
DT = "2026-03-02"
VOCAB = [f"alpha{i}" for i in range(50)]
OTHER_VOCAB = [f"beta{i}" for i in range(50)]


def random_texts(n: int, seed: int, vocab: list[str] = VOCAB, words: int = 12) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(vocab, words)) for _ in range(n)]


def unit_vectors(n: int, seed: int, towards: float = 0.0) -> np.ndarray:
    """Random unit vectors; ``towards`` > 0 pulls them all towards the first axis (a batch unlike random ones)."""
    v = np.random.default_rng(seed).normal(size=(n, DIM))
    v[:, 0] += towards
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_cands(texts: list[str], *, prompts: list[str] | None = None, domains: list[str] | str = "sci",
               vectors: np.ndarray | None = None, **generation) -> pa.Table:
    """Candidate rows as ``decide_candidates`` reads them: distinct random prompts and vectors unless given; the
    ``generation`` struct well-formed and unremarkable (judge 8, grounded, no copy) but for the fields given."""
    n = len(texts)
    prompts = prompts if prompts is not None else [f"{t} {i}" for i, t in enumerate(random_texts(n, 99, words=8))]
    domains = [domains] * n if isinstance(domains, str) else domains
    vectors = vectors if vectors is not None else unit_vectors(n, 1)
    fields = {"malformed": None, "judge_score": 8.0, "grounding": 1.0, "seed_similarity": 0.1, "near_similarity": 0.0,
              "near_copy_of": None, "semantic_similarity": 0.2, "semantic_copy_of": None}
    fields.update(generation)
    columns = {f.name: fields.get(f.name) for f in GENERATION_TYPE}
    columns = {k: v if isinstance(v, list) else [v] * n for k, v in columns.items()}
    struct = pa.array([{k: v[i] for k, v in columns.items()} for i in range(n)], GENERATION_TYPE)
    sigs = signatures(texts, NEAR)
    return pa.table({
        "doc_id": [f"synthetic/{i}" for i in range(n)],
        "domain": pa.array(domains, pa.string()),
        "prompt": pa.array(prompts, pa.string()),
        "text": pa.array(texts, pa.string()),
        "generation": struct,
        "signature": pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * NEAR.num_perm), n,
                                                          [None, pa.py_buffer(np.ascontiguousarray(sigs, "<u4"))]),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float16).ravel(), pa.float16()), DIM),
    })


def decide(cands: pa.Table, config: SyntheticConfig | None = None, **kwargs):
    n = cands.num_rows
    args = {"rule_fail": np.zeros(n, bool), "rule_detail": np.full(n, None, object), "quality": np.full(n, 0.9),
            "real": {}, "reward": None, "reward_target": None, "reward_features": None, "allowed_total": 10**6,
            "near_cfg": NEAR, "seed": 0, **kwargs}
    return decide_candidates(cands, config or SyntheticConfig(), **args)


def reasons(outcome) -> list[str | None]:
    return outcome.reason.tolist()


# candidates ------------------------------------------------------------------------------------------------------

QA = load_template(PROMPTS, "qa")
IDENTITY = {"backend": "openai", "model": "test-model", "version": "v7"}
DECODING = {"max_new_tokens": 64, "temperature": 0.7, "top_p": 0.9, "seed": 0}


def chunk(i: int, domain: str = "sci") -> Chunk:
    return Chunk(f"seed{i}#0", f"seed{i}", domain, "en", f"passage number {i}")


def qa_text(*pairs: tuple[str, str]) -> str:
    return "\n".join(f"Q: {q}\nA: {a}" for q, a in pairs)


def candidates(outputs: list[tuple[str, str]], domains: list[str] | None = None, per_chunk: int = 2,
               limits: dict[str, int] | None = None) -> tuple[pa.Table, int]:
    domains = domains or ["sci"] * len(outputs)
    chunks = [chunk(i, d) for i, d in enumerate(domains)]
    gens = [Generation(text, finish, 10, 20) for text, finish in outputs]
    made = [Produced(IDENTITY, QA, DECODING)] * len(outputs)
    return build_candidates(chunks, gens, made, DT, per_chunk, limits or {"sci": 100, "law": 100})


def malformed(table: pa.Table) -> list[str | None]:
    return [g["malformed"] for g in table.column("generation").to_pylist()]


def test_each_pair_becomes_a_row_with_its_provenance():
    table, surplus = candidates([(qa_text(("What is X?", "X is Y."), ("Why?", "Because.")), "stop")])
    assert surplus == 0 and table.num_rows == 2
    rows = table.to_pylist()
    assert [(r["prompt"], r["response"], r["text"]) for r in rows] == \
        [("What is X?", "X is Y.", "What is X?\n\nX is Y."), ("Why?", "Because.", "Why?\n\nBecause.")]
    for row in rows:
        assert row["synthetic"] is True and row["source"] == SOURCE == "synthetic"
        assert (row["domain"], row["lang"], row["dt"], row["chunk"]) == ("sci", "en", DT, "passage number 0")
        assert row["doc_id"].startswith("synthetic/") and len(row["doc_id"]) == len("synthetic/") + 24
        assert row["lineage"]["parents"] == ["seed0", "seed0#0"]
        assert [s["name"] for s in row["lineage"]["steps"]] == ["generate_synthetic"]
        gen = row["generation"]
        assert (gen["backend"], gen["model"], gen["model_version"], gen["template"], gen["template_version"]) == \
            ("openai", "test-model", "v7", "qa", "1")
        assert json.loads(gen["decoding"]) == DECODING
        assert (gen["seed_doc_id"], gen["chunk_id"], gen["finish_reason"], gen["malformed"]) == \
            ("seed0", "seed0#0", "stop", None)
        assert gen["judge_score"] is None and gen["grounding"] is None


def test_doc_ids_are_deterministic_and_unique():
    outputs = [(qa_text(("Same?", "Same."), ("Same?", "Same.")), "stop"), (qa_text(("Same?", "Same.")), "stop")]
    first, _ = candidates(outputs)
    second, _ = candidates(outputs)
    ids = first.column("doc_id").to_pylist()
    assert ids == second.column("doc_id").to_pylist() and len(set(ids)) == 3
    other = build_candidates([chunk(0)], [Generation(outputs[1][0], "stop", 1, 1)],
                             [Produced(IDENTITY, QA, {**DECODING, "temperature": 0.1})], DT, 2, {"sci": 9})[0]
    assert other.column("doc_id")[0].as_py() not in ids  # other decoding settings, another row


def test_at_most_per_chunk_pairs_and_domain_limits_count_the_surplus():
    three = qa_text(("q1?", "a1."), ("q2?", "a2."), ("q3?", "a3."))
    table, surplus = candidates([(three, "stop")], per_chunk=2)
    assert table.column("prompt").to_pylist() == ["q1?", "q2?"] and surplus == 1  # the third pair, not asked for
    table, surplus = candidates([(three, "stop")] * 3 + [(three, "stop")], domains=["sci", "sci", "sci", "law"],
                                per_chunk=2, limits={"sci": 3})
    assert [g["chunk_id"] for g in table.column("generation").to_pylist()] == ["seed0#0", "seed0#0", "seed1#0"]
    # a third pair on each of four outputs; seed1's second pair, seed2's two, and law has no room at all
    assert surplus == 4 + 1 + 2 + 2


def test_an_output_with_no_pair_is_one_malformed_row():
    table, _ = candidates([("I cannot help with that.", "stop"), ("Q: Half a quest", "length")])
    assert table.column("prompt").to_pylist() == ["I cannot help with that.", "Q: Half a quest"]
    assert table.column("response").to_pylist() == ["", ""]
    assert table.column("text").to_pylist() == ["I cannot help with that.", "Q: Half a quest"]
    assert malformed(table) == [NO_PAIR, TRUNCATED] == ["no_pair", "truncated"]
    _, surplus = candidates([("nothing", "stop")], limits={"sci": 0})
    assert surplus == 1  # a paid call with no room still counts


def test_the_last_pair_of_a_truncated_output_is_truncated():
    table, _ = candidates([(qa_text(("q1?", "a1."), ("q2?", "a2 was cut")), "length"),
                           (qa_text(("q1?", "a1."), ("q2?", "a2.")), "stop")])
    assert malformed(table) == [None, TRUNCATED, None, None]


def test_pairs_kept_before_a_truncated_one_beyond_per_chunk_are_whole():
    """The token limit cut the third pair, which per_chunk drops: the two kept were written in full."""
    table, _ = candidates([(qa_text(("q1?", "a1."), ("q2?", "a2."), ("q3?", "a3 was cu")), "length")], per_chunk=2)
    assert table.column("prompt").to_pylist() == ["q1?", "q2?"] and malformed(table) == [None, None]


def test_an_empty_answer_is_malformed():
    table, _ = candidates([("Q: asked\nA:\nQ: fine?\nA: yes", "length")])
    assert malformed(table) == [EMPTY, TRUNCATED]


def test_set_generation_replaces_fields_and_keeps_the_rest():
    table, _ = candidates([(qa_text(("q?", "a."), ("r?", "b.")), "stop")])
    table = set_generation(table, judge_score=np.array([7.0, np.nan]), near_copy_of=["news/1", None])
    gens = table.column("generation").to_pylist()
    assert [(g["judge_score"], g["near_copy_of"], g["template"]) for g in gens] == \
        [(7.0, "news/1", "qa"), (None, None, "qa")]


# measuring -------------------------------------------------------------------------------------------------------

def test_seed_similarity_is_the_exact_ngram_jaccard():
    sims = seed_similarity(["a b c d e f", "a b c d e f", "x y", "", "a b c d e f g h"],
                           ["a b c d e g", "a b c d e f", "p q", "a b", "a b c d e f g h i"], 5)
    assert sims.tolist() == [1 / 3, 1.0, 0.0, 0.0, 4 / 5]


def test_signatures_are_equal_for_equal_texts():
    sigs = signatures(["one two three four five six", "one two three four five six", "other words here"], NEAR)
    assert sigs.shape == (3, NEAR.num_perm) and sigs.dtype == np.uint32
    assert (sigs[0] == sigs[1]).all() and (sigs[0] == sigs[2]).mean() < 0.2


def history_of(texts: dict[str, str]) -> pa.Table:
    """Near-dedup history as ``history_matches`` returns it: one row per stored document and band hash."""
    sigs = signatures(list(texts.values()), NEAR)
    keys = band_keys(sigs, *lsh_params(NEAR))
    ids = [doc for doc, k in zip(texts, keys, strict=True) for _ in k]
    return pa.table({"doc_id": ids, "band_hash": pa.array(keys.ravel(), pa.uint64()),
                     "signature": pa.array([sigs[i].astype("<u4").tobytes() for i in range(len(sigs))
                                            for _ in range(keys.shape[1])], pa.binary(4 * NEAR.num_perm))})


def test_nearest_in_history_names_the_closest_stored_document():
    article = " ".join(random_texts(1, 5, words=60))
    edited = article.replace(article.split()[30], "changed", 1)
    history = history_of({"news/1": article, "news/2": " ".join(random_texts(1, 6, words=60))})
    mine = [article, edited, " ".join(random_texts(1, 7, OTHER_VOCAB, words=60))]
    sigs = signatures(mine, NEAR)
    best, best_id = nearest_in_history(history, band_keys(sigs, *lsh_params(NEAR)), sigs, NEAR.num_perm)
    stored = signatures([article], NEAR)[0]
    assert best[0] == 1.0 and best_id[0] == "news/1"
    assert best_id[1] == "news/1" and best[1] == (sigs[1] == stored).mean() and 0.7 < best[1] < 1.0
    assert best[2] == 0.0 and best_id[2] is None
    empty = history.slice(0, 0)
    assert nearest_in_history(empty, np.zeros((3, 1), np.uint64), sigs, NEAR.num_perm)[1].tolist() == [None] * 3


def test_max_cosine_folds_blocks():
    vectors, others = unit_vectors(4, 2), unit_vectors(7, 3)
    others[5] = vectors[2]
    ids = np.array([f"doc{i}" for i in range(7)], dtype=object)
    top, top_id = max_cosine(vectors, others, ids)
    sims = vectors @ others.T
    assert np.allclose(top, sims.max(axis=1)) and top_id.tolist() == [f"doc{i}" for i in sims.argmax(axis=1)]
    assert top_id[2] == "doc5" and math.isclose(top[2], 1.0)
    blocked = max_cosine(vectors, others, ids, block=2)
    assert np.array_equal(blocked[0], top) and blocked[1].tolist() == top_id.tolist()
    first = max_cosine(vectors, others[:3], ids[:3])
    folded = max_cosine(vectors, others[3:], ids[3:], best=first)
    assert np.array_equal(folded[0], top) and folded[1].tolist() == top_id.tolist()


# deciding --------------------------------------------------------------------------------------------------------

def test_unremarkable_rows_are_all_accepted():
    outcome = decide(make_cands(random_texts(6, 0)))
    assert outcome.accepted.all() and outcome.counts() == {}
    assert [(b.domain, b.rows, b.tested) for b in outcome.batches] == [("sci", 6, False)]
    assert np.isnan(outcome.reward_z).all()


def test_stored_malformed_output_is_rejected():
    outcome = decide(make_cands(random_texts(4, 0), malformed=[None, NO_PAIR, TRUNCATED, EMPTY]))
    assert reasons(outcome) == [None, MALFORMED, MALFORMED, MALFORMED]
    assert outcome.detail.tolist()[1:] == ["output: no_pair", "output: truncated", "output: empty_answer"]


@pytest.mark.parametrize(("min_grounding", "expected"), [
    (0.5, [MALFORMED, None, None, None]),
    (0.7, [MALFORMED, MALFORMED, None, None]),  # 0.7 stored as float32 is at the minimum, not below it
    (0.0, [None, None, None, None]),
])
def test_ungrounded_answers_are_malformed(min_grounding, expected):
    cands = make_cands(random_texts(4, 0), grounding=[0.49, 0.5, 0.7, None])
    outcome = decide(cands, SyntheticConfig(min_grounding=min_grounding))
    assert reasons(outcome) == expected
    assert outcome.detail[0] in (None, f"not grounded: 0.49 of the answer's content words in its chunk < "
                                       f"{min_grounding:.2f}")


def test_copies_of_the_chunk_are_rejected():
    cands = make_cands(random_texts(3, 0), seed_similarity=[0.7, 0.69, 0.95])
    outcome = decide(cands)
    assert reasons(outcome) == [COPIES_SEED, None, COPIES_SEED]
    assert outcome.detail[0] == "copies its chunk: 5-gram Jaccard 0.70 >= 0.70"
    assert reasons(decide(cands, SyntheticConfig(near_threshold=0.96))) == [None, None, None]


def test_near_copies_of_a_real_document_name_it():
    cands = make_cands(random_texts(2, 0), near_similarity=[0.8, 0.5], near_copy_of=["news/17", "news/2"])
    outcome = decide(cands)
    assert reasons(outcome) == [COPIES_SEED, None]
    assert outcome.detail[0] == "near copy of news/17: estimated Jaccard 0.80 >= 0.70"


def test_semantic_copies_name_what_they_copy():
    cands = make_cands(random_texts(2, 0), semantic_similarity=[0.96, 0.94], semantic_copy_of=["news/3", "seed#0"])
    outcome = decide(cands)
    assert reasons(outcome) == [COPIES_SEED, None]
    assert outcome.detail[0] == "semantic copy of news/3: cosine 0.960 >= 0.950"


def test_a_generated_row_repeating_an_earlier_one_is_rejected_the_first_kept():
    texts = random_texts(3, 0)
    outcome = decide(make_cands([texts[0], texts[1], texts[0]]))
    assert reasons(outcome) == [None, None, COPIES_SEED]
    assert outcome.detail[2] == "near copy of generated synthetic/0: estimated Jaccard 1.00"


def test_a_generated_row_close_in_meaning_to_an_earlier_one_is_rejected():
    vectors = unit_vectors(3, 4)
    vectors[2] = vectors[1]
    outcome = decide(make_cands(random_texts(3, 0), vectors=vectors))
    assert reasons(outcome) == [None, None, COPIES_SEED]
    assert outcome.detail[2].startswith("semantic copy of generated synthetic/1: cosine ")


def test_a_row_only_repeats_rows_still_accepted():
    texts = random_texts(2, 0)
    outcome = decide(make_cands([texts[0], texts[0], texts[1]], malformed=[NO_PAIR, None, None]))
    assert reasons(outcome) == [MALFORMED, None, None]


def test_a_prompt_too_close_to_an_accepted_prompt_is_rejected():
    prompts = ["what is the capital city of france today", "what is the capital city of france now",
               "how do tides follow the moon", "what is the capital city of spain now"]
    outcome = decide(make_cands(random_texts(4, 0), prompts=prompts))
    # 7 of 8 words in order: ROUGE-L 0.875; the fourth shares 6 of 8 with the first (0.75)
    assert reasons(outcome) == [None, COPIES_SEED, None, COPIES_SEED]
    assert outcome.detail[1] == "prompt ROUGE-L 0.88 > 0.70 against a prompt already accepted"
    assert reasons(decide(make_cands(random_texts(4, 0), prompts=prompts), SyntheticConfig(rouge_threshold=0.9))) \
        == [None, None, None, None]


def test_a_failed_rule_is_low_quality():
    outcome = decide(make_cands(random_texts(2, 0)), rule_fail=np.array([True, False]),
                     rule_detail=np.array(["pii.too_much_pii: pii_share=0.3>0.1", None], dtype=object))
    assert reasons(outcome) == [LOW_QUALITY, None]
    assert outcome.detail[0] == "rule pii.too_much_pii: pii_share=0.3>0.1"


@pytest.mark.parametrize(("gate", "expected"), [(0.5, [LOW_QUALITY, None, None]), (None, [None, None, None])])
def test_quality_below_the_gate_is_low_quality(gate, expected):
    outcome = decide(make_cands(random_texts(3, 0)), SyntheticConfig(quality_gate=gate),
                     quality=np.array([0.49, 0.5, np.nan]))
    assert reasons(outcome) == expected
    if gate is not None:
        assert outcome.detail[0] == "quality=0.49<0.50"


@pytest.mark.parametrize(("threshold", "expected"), [
    (5.0, [LOW_QUALITY, LOW_QUALITY, None, LOW_QUALITY]),
    (None, [None, None, None, None]),
])
def test_judge_below_its_threshold_or_silent_is_low_quality(threshold, expected):
    cands = make_cands(random_texts(4, 0), judge_score=[4.0, 4.5, 5.0, None])
    outcome = decide(cands, SyntheticConfig(judge_threshold=threshold))
    assert reasons(outcome) == expected
    if threshold is not None:
        assert outcome.detail[[0, 1, 3]].tolist() == \
            ["judge score 4<5", "judge score 4.5<5", "the judge gave no score"]


def reward_basis(seed: int = 0) -> tuple[RewardBasis, np.ndarray]:
    """Real rows whose classifier score follows 0.2 + 0.5 f1 - 0.3 f2 (noise sd 0.01), and that law."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(60, 2))
    coef = np.array([0.5, -0.3])
    target = 0.2 + features @ coef + rng.normal(scale=0.01, size=60)
    return RewardBasis(features, target, ["perplexity.log", "heuristics.score"]), coef


@pytest.mark.parametrize("reward_z", [3.0, None])
def test_a_reward_far_above_what_the_features_predict_is_suspect(reward_z):
    basis, coef = reward_basis()
    features = np.random.default_rng(1).normal(size=(4, 2))
    target = 0.2 + features @ coef
    target[2] += 0.5  # ~50 residual SDs above the law
    outcome = decide(make_cands(random_texts(4, 0)), SyntheticConfig(reward_z=reward_z), reward=basis,
                     reward_target=target, reward_features=features)
    if reward_z is None:
        assert outcome.accepted.all() and np.isnan(outcome.reward_z).all()
        return
    assert reasons(outcome) == [None, None, SUSPECT_REWARD, None]
    z = outcome.reward_z
    assert z[2] > 30 and np.all(np.abs(z[[0, 1, 3]]) < 3)
    assert outcome.detail[2] == (f"classifiers {target[2]:.2f}, {z[2]:.1f} sd above what perplexity and heuristics "
                                 f"predict (> 3)")


def shift_config(**values) -> SyntheticConfig:
    return SyntheticConfig(**{"shift_min_rows": 20, **values})


REAL = {"sci": RealDomain(random_texts(40, 10), unit_vectors(40, 11)),
        "law": RealDomain(random_texts(40, 12), unit_vectors(40, 13))}


def test_a_batch_unlike_its_real_rows_is_held_back_and_a_similar_one_is_not():
    shifted = random_texts(25, 20, OTHER_VOCAB)
    similar = random_texts(25, 21)
    vectors = np.vstack([unit_vectors(25, 22, towards=5.0), unit_vectors(25, 23)])
    cands = make_cands(shifted + similar, domains=["sci"] * 25 + ["law"] * 25, vectors=vectors)
    outcome = decide(cands, shift_config(), real=REAL)
    assert reasons(outcome) == [DISTRIBUTION_SHIFT] * 25 + [None] * 25
    law, sci = outcome.batches
    assert (law.domain, law.tested, law.shifted, law.collapsed) == ("law", True, [], [])
    assert law.vocab_js < 0.4 and law.mmd < 0.05
    assert (sci.domain, sci.rows, sci.tested) == ("sci", 25, True)
    assert sci.shifted[0] == "vocabulary JS 1.000 > 0.4" and sci.shifted[1].startswith("embedding MMD² ")
    assert sci.mmd > 0.05 and len(sci.shifted) == 2
    assert outcome.detail[0] == "batch of 25 held back: " + "; ".join(sci.shifted)
    assert set(outcome.detail[:25]) == {outcome.detail[0]}


def test_a_batch_smaller_than_shift_min_rows_is_not_tested():
    cands = make_cands(random_texts(19, 20, OTHER_VOCAB), vectors=unit_vectors(19, 22, towards=5.0))
    outcome = decide(cands, shift_config(), real=REAL)
    assert outcome.accepted.all()
    [batch] = outcome.batches
    assert (batch.rows, batch.tested, batch.shifted) == (19, False, [])
    few_real = {"sci": RealDomain(REAL["sci"].texts[:19], REAL["sci"].vectors[:19])}
    cands = make_cands(random_texts(25, 20, OTHER_VOCAB))
    assert not decide(cands, shift_config(), real=few_real).batches[0].tested


def test_rows_rejected_earlier_do_not_count_in_the_batch():
    cands = make_cands(random_texts(25, 20, OTHER_VOCAB), malformed=[NO_PAIR] * 6 + [None] * 19)
    outcome = decide(cands, shift_config(), real=REAL)
    assert outcome.batches[0].rows == 19 and not outcome.batches[0].tested
    assert outcome.counts() == {MALFORMED: 6}


def collapsed_batch() -> pa.Table:
    """25 rows repeating one 10-word phrase (plus 10 words of their own) and pointing one way: distinct enough that
    no row copies another, far less varied than real rows."""
    phrase = "the answer is always this very same long sentence here"
    texts = [f"{phrase} {t}" for t in random_texts(25, 30, words=10)]
    return make_cands(texts, vectors=unit_vectors(25, 31, towards=5.0))


@pytest.mark.parametrize(("action", "expected"), [("warn", None), ("hold", DISTRIBUTION_SHIFT)])
def test_a_collapsed_batch_raises_the_alarm_and_hold_holds_it(action, expected):
    config = shift_config(collapse_action=action, shift_max_vocab_js=None, shift_max_mmd=None)
    outcome = decide(collapsed_batch(), config, real=REAL)
    [batch] = outcome.batches
    assert batch.tested and batch.shifted == []
    assert [c.split(" ")[0] for c in batch.collapsed] == ["distinct-2", "embedding"]
    assert batch.distinct2 < 0.7 * batch.real_distinct2 and batch.dispersion < 0.7 * batch.real_dispersion
    assert reasons(outcome) == [expected] * 25
    if expected:
        assert outcome.detail[0] == "batch of 25 held back: " + "; ".join(batch.collapsed)


def test_a_varied_batch_raises_no_alarm():
    config = shift_config(collapse_action="hold", shift_max_vocab_js=None, shift_max_mmd=None)
    outcome = decide(make_cands(random_texts(25, 40), vectors=unit_vectors(25, 41)), config, real=REAL)
    assert outcome.batches[0].tested and outcome.batches[0].collapsed == [] and outcome.accepted.all()


def test_rows_over_the_cap_go_lowest_judged_first():
    cands = make_cands(random_texts(5, 0), judge_score=[6.0, 9.0, 7.0, 10.0, 8.0])
    outcome = decide(cands, allowed_total=2)
    assert reasons(outcome) == [OVER_CAP, None, OVER_CAP, None, OVER_CAP]
    assert outcome.detail[0] == "beyond max_share: the partition may hold 2 synthetic rows"
    assert reasons(decide(cands, allowed_total=0)) == [OVER_CAP] * 5
    assert decide(cands, allowed_total=5).accepted.all()


def test_over_cap_ties_on_the_judge_go_by_quality_and_rejected_rows_do_not_count():
    cands = make_cands(random_texts(4, 0), judge_score=[8.0, 8.0, 8.0, None], malformed=[None, None, None, NO_PAIR])
    outcome = decide(cands, quality=np.array([0.6, 0.9, 0.7, 1.0]), allowed_total=1)
    assert reasons(outcome) == [OVER_CAP, None, OVER_CAP, MALFORMED]
    unjudged = make_cands(random_texts(3, 0), judge_score=[None, 6.0, None])
    outcome = decide(unjudged, SyntheticConfig(judge_threshold=None), quality=np.array([0.9, 0.6, 0.8]),
                     allowed_total=2)
    assert reasons(outcome) == [None, None, OVER_CAP]  # a judged row before unjudged ones, then quality


def test_the_first_reason_in_order_is_the_one_recorded():
    basis, coef = reward_basis()
    features = np.zeros((4, 2))
    target = np.array([0.2, 0.2, 0.2, 5.0])  # only the last is suspect
    cands = make_cands(random_texts(4, 0), malformed=[NO_PAIR, None, None, None],
                       seed_similarity=[0.9, 0.9, 0.1, 0.1], judge_score=[1.0, 1.0, 1.0, 1.0])
    outcome = decide(cands, rule_fail=np.array([True, True, True, True]),
                     rule_detail=np.array(["r"] * 4, dtype=object), reward=basis, reward_target=target,
                     reward_features=features, allowed_total=0)
    assert reasons(outcome) == [MALFORMED, COPIES_SEED, LOW_QUALITY, LOW_QUALITY]
    outcome = decide(make_cands(random_texts(2, 0)), reward=basis, reward_target=np.array([0.2, 5.0]),
                     reward_features=np.zeros((2, 2)), allowed_total=0)
    assert reasons(outcome) == [OVER_CAP, SUSPECT_REWARD]
    assert outcome.counts() == {OVER_CAP: 1, SUSPECT_REWARD: 1}
