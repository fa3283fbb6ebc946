"""The ``generate_synthetic`` stage: plan, seed, generate, validate, safeguard; publish the day's rows with the
accepted synthetic rows added and the rejected ones in the ledger.

Reads ``merge_feedback``'s rows and publishes ``generate_synthetic`` with three parts: ``rows`` (every real row, plus
the accepted synthetic rows), ``rejects`` (each rejected synthetic row with its ``synthetic_*`` reason) and
``candidates`` (every generated row with all its scores and measurements, so ``redecide_synthetic`` can apply other
thresholds without a model call). Model calls are cached per batch under ``staging/{dag}/dt=D/synthetic_calls``. With
nothing planned the stage passes its input on. Writes ``reports/dt=D/generate_synthetic.md``.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import dctp_tasks
from dctp_tasks.config import GeneratorConfig, PipelineConfig
from dctp_tasks.dedup.report import table_cell, write_report
from dctp_tasks.embeddings import STATE as EMBEDDINGS
from dctp_tasks.embeddings import encoder_identity, encoder_mismatch, stored_encoder, vectors_column, vectors_matrix
from dctp_tasks.ledger import RejectWriter
from dctp_tasks.publish import NotPublished, resolve
from dctp_tasks.quality.base import Scorer, ScoringContext
from dctp_tasks.quality.decide import VERDICTS, composite, read_scores, redactor, rule_thresholds
from dctp_tasks.quality.embeddings import EmbeddingConfig, document_vectors, encode
from dctp_tasks.quality.registry import build_scorers
from dctp_tasks.quality.scoring import score_batch
from dctp_tasks.records import append_step, conform, content_hashes, params_hash, with_column
from dctp_tasks.staging import REJECTS, ROWS, stage_output, stage_rows
from dctp_tasks.stats import StageResult, Timer
from dctp_tasks.storage import Storage, staging_dir, state_dir
from dctp_tasks.synthetic import measures
from dctp_tasks.synthetic.candidates import GENERATION_FIELD, SOURCE, Produced, build_candidates, set_generation
from dctp_tasks.synthetic.generate import CallStats, cached_generate
from dctp_tasks.synthetic.generators import Endpoint, Generator, build_generator
from dctp_tasks.synthetic.history import clear_history, read_history, write_history
from dctp_tasks.synthetic.plan import Plan, plan_generation, render_plan
from dctp_tasks.synthetic.prompts import Template, load_template, parse_score, prompts_dir, template_for
from dctp_tasks.synthetic.safeguards import (
    REASONS,
    Outcome,
    RealDomain,
    RewardBasis,
    decide_candidates,
    max_cosine,
    nearest_in_history,
    seed_similarity,
    signature_matrix,
    signatures,
)
from dctp_tasks.synthetic.seeds import SEED_COLUMNS, rank_seeds, seed_chunks

log = logging.getLogger(__name__)

STAGE = "generate_synthetic"
INPUT_STAGE = "merge_feedback"
CANDIDATES = "candidates"
CALLS = "synthetic_calls"
"""Sibling of the stage's folder holding every model call's stored batch (the resume cache)."""
JUDGE_TEMPLATE = "judge"
JUDGE_DECODING = {"max_new_tokens": 16, "temperature": 0.0}
"""How the generator grades its own rows when no judge is configured: greedily, one short line (``Score: N``), so a
score never hangs on a sampling draw; a configured judge decodes as its own config says."""
REAL_SAMPLE = 1_000
"""Real rows per domain the batch tests compare with (seeded sample)."""
REWARD_SAMPLE = 20_000
"""Real rows the reward-hacking regression is fitted on at most."""
_WORKING = ("chunk", "signature", "vector")  # candidate columns that are not exported
_HISTORY_BLOCK = 256  # earlier synthetic rows compared per step: bounds the (rows x block x num_perm) comparison


@dataclass
class Generated:
    """What generation did: counts and model time, for the report and MLflow."""

    chunks: int = 0
    candidates: int = 0
    surplus: int = 0
    generation: CallStats = field(default_factory=CallStats)
    judging: CallStats = field(default_factory=CallStats)
    by_domain: Counter = field(default_factory=Counter)


def generate_synthetic_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *,
                           input_stage: str = INPUT_STAGE, input_version: str | None = None,
                           endpoints: dict[str, Endpoint] | None = None) -> StageResult:
    """Generate the planned synthetic rows of date ``dt``, decide them and publish the day with the accepted ones.

    ``endpoints`` maps a generator's ``conn_id`` to where its OpenAI-compatible API is (the DAG resolves the
    Airflow connections); the ``transformers`` backend needs none.
    """
    cfg = config.synthetic
    in_dir = stage_rows(storage, dag_id, dt, input_stage, input_version)
    with Timer() as timer:
        facts = _facts(storage, in_dir)
        counts = Counter(d for d, s in zip(facts.column("domain").to_pylist(), _synthetic(facts), strict=True)
                         if d is not None and not s)
        plan = plan_generation(dict(counts), cfg) if cfg.enabled else Plan(facts.num_rows, 0, 0)
        if plan.planned == 0:
            report = write_report(storage, dt, STAGE, render_report(dt, plan, None, None, None, switched_off=not
                                                                    cfg.enabled))
            clear_history(storage, dt)
            result = StageResult(STAGE, storage.uri(in_dir), version=input_version, output_stage=input_stage)
            result.total = result.kept = facts.num_rows
            result.extra = {"planned": 0, "generated": 0, "synthetic": 0, "report": report}
            log.info("generate_synthetic dt=%s: nothing planned; %s passes through", dt, input_stage)
            return result
        with stage_output(storage, dag_id, dt, STAGE) as out:
            generated = _generate(storage, config, dag_id, dt, in_dir, facts, plan, out.sub(CANDIDATES),
                                  endpoints or {})
            outcome, written = _decide_and_write(storage, config, dt, in_dir, facts, out.sub(CANDIDATES), out,
                                                 plan.allowed_total)
        report = write_report(storage, dt, STAGE, render_report(dt, plan, generated, outcome, written))
    return _result(storage, out, timer, facts.num_rows, plan, outcome, written, report, generated)


def redecide_synthetic_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *, input_stage: str,
                           input_version: str | None, candidates_dag_id: str,
                           candidates_version: str | None) -> StageResult:
    """Decide the stored candidates of ``candidates_dag_id``'s ``generate_synthetic`` (``candidates_version``) again
    against ``input_stage``'s rows, with this config's thresholds: no model runs. Without stored candidates (nothing
    was generated for the date), the input passes on."""
    in_dir = stage_rows(storage, dag_id, dt, input_stage, input_version)
    if candidates_version is None:
        result = StageResult(STAGE, storage.uri(in_dir), version=input_version, output_stage=input_stage)
        result.total = result.kept = storage.count_rows(in_dir)
        result.extra = {"planned": 0, "generated": 0, "synthetic": 0}
        return result
    cand_dir = posixpath.join(staging_dir(candidates_dag_id, dt, STAGE), f"v-{candidates_version}", CANDIDATES)
    with Timer() as timer:
        facts = _facts(storage, in_dir)
        real = int((~_synthetic(facts)).sum())
        plan = Plan(real, *(2 * [plan_generation({"_": real}, config.synthetic).allowed_total]))
        with stage_output(storage, dag_id, dt, STAGE) as out:
            outcome, written = _decide_and_write(storage, config, dt, in_dir, facts, cand_dir, out,
                                                 plan.allowed_total)
        report = write_report(storage, dt, STAGE, render_report(dt, plan, None, outcome, written, redecided=True))
    return _result(storage, out, timer, facts.num_rows, plan, outcome, written, report, None)


def commit_metadata(dag_id: str, result: dict) -> dict[str, str | int]:
    """Return the Delta commit metadata of the stage's result (its XCom): the stored candidates a re-decision starts
    from, the synthetic rows exported and the rejected ones by reason; nothing when the stage passed its input on."""
    if result["output_stage"] != result["stage"]:
        return {}
    rejected = {key.removeprefix("dropped_"): value for key, value in result.items()
                if key.startswith("dropped_synthetic_")}
    return {"synthetic_dag_id": dag_id, "synthetic_version": result["version"],
            "synthetic_rows": result["synthetic"], "synthetic_rejected": json.dumps(rejected, sort_keys=True)}


# generating ------------------------------------------------------------------------------------------------------

def _generate(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, in_dir: str, facts: pa.Table,
              plan: Plan, cand_dir: str, endpoints: dict[str, Endpoint]) -> Generated:
    """Seed, generate, score, judge and measure the planned rows; write them to ``cand_dir``."""
    cfg = config.synthetic
    done = Generated()
    folder = prompts_dir(cfg)
    templates: dict[str, Template] = {}
    chunks = []
    for domain_plan in plan.domains:
        if not domain_plan.planned:
            continue
        rows = rank_seeds(facts, domain_plan.domain, list(config.annotation.stratify_by), cfg.max_seeds_per_domain)
        if not len(rows):
            log.warning("domain %s: no real row passed the quality checks today: nothing to seed from",
                        domain_plan.domain)
            continue
        seeds = _take(storage, in_dir, rows, ["doc_id", "domain", "lang", "text"])
        chunks += seed_chunks(seeds, math.ceil(domain_plan.planned / cfg.questions_per_chunk), cfg.chunk_words,
                              cfg.chunk_overlap)
        name = template_for(cfg, domain_plan.domain)
        templates.setdefault(name, load_template(folder, name))
    done.chunks = len(chunks)
    generator = build_generator(cfg.generator, endpoints.get(cfg.generator.conn_id))
    # the generator's own decoding (sampled, hundreds of tokens) would make its grades noisy and slow
    judge_cfg = cfg.judge or cfg.generator.model_copy(update=JUDGE_DECODING)
    judge = build_generator(judge_cfg, endpoints.get(judge_cfg.conn_id))
    try:
        decoding = {"max_new_tokens": cfg.generator.max_new_tokens, "temperature": cfg.generator.temperature,
                    "top_p": cfg.generator.top_p, "seed": cfg.generator.seed}
        prompts = [templates[template_for(cfg, c.domain)].render(chunk=c.text, n=cfg.questions_per_chunk)
                   for c in chunks]
        calls = posixpath.join(staging_dir(dag_id, dt, CALLS))
        seed = cfg.generator.seed + int(dt.replace("-", ""))
        outputs = cached_generate(storage, posixpath.join(calls, "generate"), generator, decoding, prompts, seed,
                                  cfg.generator.batch_size, done.generation)
        produced = [Produced(generator.identity, templates[template_for(cfg, c.domain)], decoding) for c in chunks]
        cands, done.surplus = build_candidates(chunks, outputs, produced, dt, cfg.questions_per_chunk,
                                               {d.domain: d.planned for d in plan.domains})
        cands = normalize_candidates(cands, config)
        done.candidates = cands.num_rows
        done.by_domain.update(cands.column("domain").to_pylist())
        cands = _judge(storage, config, cands, judge, judge_cfg, posixpath.join(calls, "judge"), seed,
                       done.judging)
    finally:
        generator.close()
        judge.close()
    cands = _score(storage, config, dt, cands)
    cands = _measure(storage, config, dt, cands)
    with storage.writer(cand_dir, schema=cands.schema) as writer:
        writer.write(cands)
    return done


def normalize_candidates(cands: pa.Table, config: PipelineConfig) -> pa.Table:
    """Normalize generated text as ingested text is (repair, NFC, whitespace) and identify its language, so the
    real data's language rules judge it by its own ``lang_score``, not its seed's."""
    from dctp_tasks.normalize import identify_languages, normalize_texts

    if cands.num_rows == 0:
        return cands
    prompt = normalize_texts(pc.fill_null(cands.column("prompt"), ""), config.normalize)
    response = normalize_texts(pc.fill_null(cands.column("response"), ""), config.normalize)
    has_response = pc.greater(pc.utf8_length(response), 0)
    text = pc.if_else(has_response, pc.binary_join_element_wise(prompt, response, "\n\n"), prompt)
    langs, scores = identify_languages(text)
    for name, values in (("prompt", prompt), ("response", response), ("text", text), ("lang", langs),
                         ("lang_score", scores), ("content_hash", content_hashes(text))):
        cands = with_column(cands, cands.schema.field(name), values)
    return cands


def _judge(storage: Storage, config: PipelineConfig, cands: pa.Table, judge: Generator, judge_cfg: GeneratorConfig,
           folder: str, seed: int, stats: CallStats) -> pa.Table:
    """Grade every well-formed pair 1-10 against its chunk; keep the score (the threshold is applied later)."""
    cfg = config.synthetic
    template = load_template(prompts_dir(cfg), JUDGE_TEMPLATE)
    malformed = pc.is_valid(pc.struct_field(cands.column("generation"), "malformed")).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(~malformed)
    chunk, prompt, response = (cands.column(n).to_pylist() for n in ("chunk", "prompt", "response"))
    prompts = [template.render(chunk=chunk[i], prompt=prompt[i], response=response[i]) for i in rows]
    settings = {"template": template.digest, "max_new_tokens": judge_cfg.max_new_tokens,
                "temperature": judge_cfg.temperature}
    graded = cached_generate(storage, folder, judge, settings, prompts, seed, judge_cfg.batch_size, stats) \
        if prompts else []
    scores = np.full(cands.num_rows, np.nan)
    scores[rows] = [parse_score(g.text) for g in graded]
    return set_generation(cands, judge_score=scores, judge_model=[judge.identity.get("model")] * cands.num_rows)


def _score(storage: Storage, config: PipelineConfig, dt: str, cands: pa.Table) -> pa.Table:
    """Score the candidates with every scorer real rows get (CPU and model scorers alike)."""
    if not config.quality.enabled or cands.num_rows == 0:
        return cands
    scorers = build_scorers(config.quality)
    context = ScoringContext(storage, dt)
    for scorer in scorers:
        scorer.prepare(context)
    seconds = {s.name: 0.0 for s in scorers}
    batch = cands.drop_columns([c for c in _WORKING if c in cands.column_names]).to_batches()
    scored = pa.concat_tables([score_batch(b, scorers, seconds) for b in batch])
    return cands.append_column(scored.schema.field("scores"), scored.column("scores"))


def _measure(storage: Storage, config: PipelineConfig, dt: str, cands: pa.Table) -> pa.Table:
    """Store each candidate's grounding and its closest chunk, real document (history through today) and vector."""
    near = config.dedup_near
    texts = cands.column("text").to_pylist()
    chunks = cands.column("chunk").to_pylist()
    grounding = measures.grounding(cands.column("response").to_pylist(), chunks)
    seed_sim = seed_similarity(texts, chunks, near.ngram)
    sigs = signatures(texts, near) if texts else np.zeros((0, near.num_perm), np.uint32)
    from dctp_tasks.dedup.minhash import band_keys
    from dctp_tasks.dedup.near import history_matches, lsh_params

    keys = band_keys(sigs, *lsh_params(near)) if len(sigs) else np.zeros((0, 1), np.uint64)
    history = history_matches(storage, dt, keys, near, inclusive=True) if len(sigs) else None
    near_sim, near_of = nearest_in_history(history, keys, sigs, near.num_perm) if history is not None \
        else (np.zeros(0), np.zeros(0, object))
    emb = EmbeddingConfig.from_dedup(config.dedup_semantic)
    vectors = encode(texts, emb) if texts else np.zeros((0, 0), np.float32)
    unique_chunks, chunk_of = np.unique(np.asarray(chunks, dtype=object), return_inverse=True)
    chunk_vectors = encode(unique_chunks.tolist(), emb) if len(unique_chunks) else vectors[:0]
    sem_sim = np.einsum("ij,ij->i", vectors, chunk_vectors[chunk_of]) if len(texts) else np.zeros(0)
    sem_of = np.asarray(cands.column("generation").combine_chunks().field("chunk_id").to_pylist(), dtype=object)
    best = _today_vectors_max(storage, dt, vectors, emb)
    if best is not None:
        better = best[0] > sem_sim
        sem_sim, sem_of = np.where(better, best[0], sem_sim), np.where(better, best[1], sem_of)
    cfg = config.synthetic
    domains = sorted(set(cands.column("domain").to_pylist()))
    earlier = read_history(storage, dt, cfg.history_days, domains) if cfg.history_days and texts else None
    if earlier is not None:  # the rows accepted on earlier dates: a copy of one is a copy too
        ids = np.asarray(earlier.column("doc_id").to_pylist(), dtype=object)
        stored = signature_matrix(earlier.column("signature"), near.num_perm)
        for start in range(0, len(stored), _HISTORY_BLOCK):
            estimate = (sigs[:, None, :] == stored[None, start:start + _HISTORY_BLOCK, :]).mean(axis=2)
            top = estimate.argmax(axis=1)
            value = estimate[np.arange(len(sigs)), top]
            better = value > near_sim
            near_sim[better], near_of[better] = value[better], ids[start + top[better]]
        sem_sim, sem_of = max_cosine(vectors, vectors_matrix(earlier.column("vector")), ids,
                                     best=(sem_sim.astype(np.float64), sem_of.astype(object)))
    cands = set_generation(cands, grounding=grounding, seed_similarity=seed_sim, near_similarity=near_sim,
                           near_copy_of=near_of, semantic_similarity=sem_sim.astype(np.float64),
                           semantic_copy_of=sem_of)
    signature = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * near.num_perm), len(sigs),
                                                     [None, pa.py_buffer(np.ascontiguousarray(sigs, "<u4"))])
    return cands.append_column("signature", signature).append_column("vector", vectors_column(vectors, "float16"))


def _today_vectors_max(storage: Storage, dt: str, vectors: np.ndarray,
                       emb: EmbeddingConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """Return each vector's closest stored embedding of the day (semantic dedup's survivors), or ``None``."""
    if not len(vectors):
        return None
    try:
        folder = resolve(storage, state_dir(EMBEDDINGS, dt))
    except NotPublished:
        log.info("no stored embeddings for dt=%s: generated rows are compared with their chunks only", dt)
        return None
    mismatch = encoder_mismatch(stored_encoder(storage.parquet_schema(folder)), encoder_identity(emb))
    if mismatch:
        log.warning("stored embeddings of dt=%s not compared: %s", dt, mismatch)
        return None
    best = None
    for batch in storage.iter_batches(folder, batch_size=50_000, columns=["doc_id", "embedding"]):
        ids = np.asarray(batch.column("doc_id").to_pylist(), dtype=object)
        best = max_cosine(vectors, vectors_matrix(batch.column("embedding")), ids, best=best)
    return best


# deciding --------------------------------------------------------------------------------------------------------

def _decide_and_write(storage: Storage, config: PipelineConfig, dt: str, in_dir: str, facts: pa.Table,
                      cand_dir: str, out, allowed: int) -> tuple[Outcome, dict]:
    """Decide the candidates in ``cand_dir`` against the real rows of ``in_dir``; write rows, rejects and the
    decided candidates' numbers into the publication ``out``."""
    cfg = config.synthetic
    cands = storage.read_table(cand_dir)
    q = config.quality
    scorers = build_scorers(q) if q.enabled and "scores" in cands.column_names else []
    n = cands.num_rows
    judged = Judged(np.zeros(n, bool), np.full(n, None, object), np.full(n, np.nan),
                    np.full(n, len(VERDICTS), np.int8))
    reward = reward_target = reward_features = None
    if scorers:
        mine, domains = read_scores(storage, cand_dir, scorers, config.batch_size)
        try:
            real_scores, real_domains = read_scores(storage, in_dir, scorers, config.batch_size)
        except ValueError as exc:  # the real rows were scored without one of today's scorers
            log.warning("real rows' scores cannot be compared with the generated rows': %s", exc)
            real_scores, real_domains = None, None
        judged = judge_quality(q, scorers, mine, domains, real_scores, real_domains, cfg.exempt_rules)
        if real_scores is not None:
            reward = _reward_basis(real_scores, real_domains, scorers, config, dt)
        if reward is not None:
            reward_features, reward_target = _reward_arrays(mine, domains, scorers, reward.names)
    domains_today = sorted(set(cands.column("domain").to_pylist()))
    real = _real_samples(storage, config, dt, in_dir, facts, domains_today)
    earlier = read_history(storage, dt, cfg.history_days, domains_today) if cfg.history_days else None
    earlier_prompts: dict[str, list[str]] = {}
    if earlier is not None:
        for domain, prompt in zip(earlier.column("domain").to_pylist(), earlier.column("prompt").to_pylist(),
                                  strict=True):
            earlier_prompts.setdefault(domain, []).append(prompt or "")
    quality, verdict = judged.quality, judged.verdict
    outcome = decide_candidates(cands, cfg, rule_fail=judged.fail, rule_detail=judged.detail, quality=quality,
                                real=real, reward=reward, reward_target=reward_target,
                                reward_features=reward_features, allowed_total=allowed, near_cfg=config.dedup_near,
                                seed=cfg.seed + int(dt.replace("-", "")), earlier_prompts=earlier_prompts)
    cands = set_generation(cands, reward_z=outcome.reward_z)
    # the decided candidates go with this version: a later re-decision starts from them
    with out.writer(CANDIDATES, schema=cands.schema) as writer:
        writer.write(cands)
    accepted = outcome.accepted
    schema = storage.parquet_schema(in_dir)
    from dctp_tasks.quality.decide import QUALITY_FIELDS

    extra = [GENERATION_FIELD] + [f for f in QUALITY_FIELDS if f.name not in schema.names and "quality" in
                                  schema.names]
    schema = pa.schema([*schema, *[f for f in extra if f.name not in schema.names]])
    step = params_hash(cfg.model_dump(mode="json"))
    written = {"real": 0, "synthetic": 0}
    with out.writer(ROWS, schema=schema) as writer, \
            RejectWriter(storage, out.sub(REJECTS), dt, STAGE) as rejects:
        for batch in storage.iter_batches(in_dir, batch_size=config.batch_size):
            table = conform(pa.Table.from_batches([batch]), schema)
            writer.write(table)
            written["real"] += table.num_rows
        keep = cands.filter(pa.array(accepted))
        if keep.num_rows:
            keep = keep.drop_columns([c for c in _WORKING if c in keep.column_names])
            if "quality" in schema.names:
                kept_verdict = np.asarray((*VERDICTS, None), dtype=object)[verdict[accepted]]
                keep = with_column(keep, schema.field("quality"),
                                   pa.array(quality[accepted], pa.float32(), mask=np.isnan(quality[accepted])))
                keep = with_column(keep, schema.field("quality_verdict"), pa.array(kept_verdict, pa.string()))
            redact = redactor(q)
            if redact is not None:
                keep = redact(keep)
            keep = with_column(keep, keep.schema.field("lineage"),
                               append_step(keep.column("lineage"), "decide_synthetic", dctp_tasks.__version__, step))
            writer.write(conform(keep, schema).select(schema.names))
            written["synthetic"] = keep.num_rows
        gone = np.flatnonzero(~accepted)
        rejects.add_table(pa.table({
            "doc_id": cands.column("doc_id").take(pa.array(gone, pa.int64())),
            "source": pa.array([SOURCE] * len(gone), pa.string()),
            "outcome": pa.array(["filtered"] * len(gone), pa.string()),
            "reason": pa.array(outcome.reason[gone].tolist(), pa.string()),
            "detail": pa.array([str(d) for d in outcome.detail[gone]], pa.string()),
        }))
    # what later dates must not copy: the rows accepted now (a re-decision replaces the date's partition)
    write_history(storage, dt, cands.filter(pa.array(accepted)))
    written["candidates"] = n
    written["judge"] = pc.cast(pc.struct_field(cands.column("generation"), "judge_score"),
                               pa.float64()).to_numpy(zero_copy_only=False)
    written["quality"] = quality
    written["domains"] = np.asarray(cands.column("domain").to_pylist(), dtype=object)
    return outcome, written


def _reward_basis(scores: dict, domains: np.ndarray, scorers: list[Scorer], config: PipelineConfig,
                  dt: str) -> RewardBasis | None:
    """Return the real rows' features and classifier target for the reward check (``None``: no classifier)."""
    if config.synthetic.reward_z is None or not any(s.name.startswith("classifier_") for s in scorers):
        return None
    features, target, names = _reward_columns(scores, domains, scorers)
    if target is None or np.isnan(target).all():
        return None
    if len(target) > REWARD_SAMPLE:
        pick = np.sort(np.random.default_rng(int(dt.replace("-", ""))).choice(len(target), REWARD_SAMPLE,
                                                                              replace=False))
        features, target = features[pick], target[pick]
    return RewardBasis(features, target, names)


@dataclass
class Judged:
    """The real data's verdict on each generated row: a failed rule (and which), the composite, the verdict."""

    fail: np.ndarray
    detail: np.ndarray
    quality: np.ndarray
    verdict: np.ndarray


def judge_quality(q, scorers: list[Scorer], scores: dict, domains: np.ndarray, real_scores: dict | None,
                  real_domains: np.ndarray | None, exempt: list[str]) -> Judged:
    """Apply the real data's rules (but ``exempt``) to the generated rows' scores, and compute their composite among
    the day's real rows of their domain: scorers that rank within a domain (perplexity) rank them against real
    text, not against each other."""
    n = len(domains)
    fail, detail = np.zeros(n, bool), np.full(n, None, object)
    for scorer in scorers:
        for rule in scorer.rules:
            if f"{scorer.name}.{rule.name}" in exempt:
                continue
            limits = rule_thresholds(q, scorer, rule, domains)
            values = scores[scorer.name][rule.field]
            fails = rule.fails(values, limits) & ~fail
            fail |= fails
            detail[fails] = [f"{scorer.name}.{rule.name}: {rule.field}={v:.3g}{rule.op}{t:.3g}"
                             for v, t in zip(np.asarray(values, float)[fails], limits[fails], strict=True)]
    if real_scores is not None:
        joint = {s.name: {f.name: np.concatenate([np.asarray(real_scores[s.name][f.name]),
                                                  np.asarray(scores[s.name][f.name])]) for f in s.fields}
                 for s in scorers}
        quality = composite(q, scorers, joint, np.concatenate([real_domains, domains]))[len(real_domains):]
    else:
        quality = composite(q, scorers, scores, domains)
    verdict = np.zeros(n, dtype=np.int8)
    with np.errstate(invalid="ignore"):
        verdict[quality < q.review_below] = VERDICTS.index("review")
    verdict[fail] = VERDICTS.index("fail")
    return Judged(fail, detail, quality, verdict)


def _reward_arrays(scores: dict, domains: np.ndarray, scorers: list[Scorer],
                   names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    features, target, mine = _reward_columns(scores, domains, scorers)
    index = {name: i for i, name in enumerate(mine)}
    aligned = np.column_stack([features[:, index[name]] if name in index else np.full(len(domains), np.nan)
                               for name in names]) if names else np.zeros((len(domains), 0))
    return aligned, target if target is not None else np.full(len(domains), np.nan)


def _reward_columns(scores: dict, domains: np.ndarray,
                    scorers: list[Scorer]) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Features: log perplexity and the heuristic and language scores; target: the classifiers' mean quality."""
    columns, names = [], []
    for scorer in scorers:
        if scorer.name == "perplexity":
            columns.append(np.log(np.clip(scores["perplexity"]["perplexity"].astype(float), 1e-6, None)))
            names.append("perplexity.log")
        elif scorer.name in ("heuristics", "language"):
            for name, values in scores[scorer.name].items():
                if values.dtype.kind == "f":
                    columns.append(values)
                    names.append(f"{scorer.name}.{name}")
    parts = [np.asarray(s.quality(scores[s.name], domains), dtype=np.float64) for s in scorers
             if s.name.startswith("classifier_") and s.quality(scores[s.name], domains) is not None]
    target = np.nanmean(np.column_stack(parts), axis=1) if parts else None
    features = np.column_stack(columns) if columns else np.zeros((len(domains), 0))
    return features, target, names


def _real_samples(storage: Storage, config: PipelineConfig, dt: str, in_dir: str, facts: pa.Table,
                  domains: list[str]) -> dict[str, RealDomain]:
    """Return a seeded sample of each domain's kept real rows: texts and vectors (stored ones reused)."""
    all_domains = np.asarray(facts.column("domain").to_pylist(), dtype=object)
    real = ~_synthetic(facts)
    rng = np.random.default_rng(config.synthetic.seed + int(dt.replace("-", "")))
    emb = EmbeddingConfig.from_dedup(config.dedup_semantic)
    out = {}
    for domain in domains:
        rows = np.flatnonzero((all_domains == domain) & real)
        if not len(rows):
            continue
        rows = np.sort(rng.choice(rows, size=min(REAL_SAMPLE, len(rows)), replace=False))
        table = _take(storage, in_dir, rows, ["doc_id", "text"])
        texts = [t or "" for t in table.column("text").to_pylist()]
        vectors, _ = document_vectors(storage, [dt] * len(texts), table.column("doc_id").to_pylist(), texts, emb)
        out[domain] = RealDomain(texts, vectors)
    return out


# helpers ---------------------------------------------------------------------------------------------------------

def _facts(storage: Storage, in_dir: str) -> pa.Table:
    names = storage.parquet_schema(in_dir).names
    return storage.read_table(in_dir, columns=[c for c in (*SEED_COLUMNS, "lang") if c in names])


def _synthetic(facts: pa.Table) -> np.ndarray:
    if "synthetic" not in facts.column_names:
        return np.zeros(facts.num_rows, dtype=bool)
    return pc.fill_null(facts.column("synthetic"), False).to_numpy(zero_copy_only=False)


def _take(storage: Storage, in_dir: str, rows: np.ndarray, columns: list[str]) -> pa.Table:
    """Return ``rows`` of ``in_dir`` in the order given (``take_rows`` wants them sorted)."""
    order = np.argsort(rows, kind="stable")
    names = storage.parquet_schema(in_dir).names
    table = storage.take_rows(in_dir, rows=rows[order].astype(np.int64), columns=[c for c in columns if c in names])
    return table.take(pa.array(np.argsort(order)))


def _result(storage: Storage, out, timer: Timer, real: int, plan: Plan, outcome: Outcome, written: dict,
            report: str, generated: Generated | None) -> StageResult:
    result = StageResult(STAGE, storage.uri(out.sub(ROWS)), total=real + written["candidates"],
                         kept=written["real"] + written["synthetic"], version=out.version)
    result.seconds = timer.seconds
    result.dropped_by_reason = Counter(outcome.counts())
    judge = written["judge"]
    result.extra = {"planned": plan.planned, "allowed": plan.allowed_total, "generated": written["candidates"],
                    "synthetic": written["synthetic"], "real": written["real"], "report": report,
                    "synthetic_share": round(written["synthetic"] / max(1, written["real"] + written["synthetic"]),
                                             4),
                    "judge_mean": float(np.nanmean(judge)) if np.isfinite(judge).any() else -1.0,
                    **_quantiles("judge", judge), **_quantiles("quality", written["quality"]),
                    "judge_scored": int(np.isfinite(judge).sum()),
                    "batches_held": sum(1 for b in outcome.batches if b.shifted),
                    "collapse_alarms": sum(1 for b in outcome.batches if b.collapsed)}
    if generated is not None:
        g = generated.generation
        result.extra.update({"chunks": generated.chunks, "surplus_pairs": generated.surplus,
                             **g.as_dict("generate"), **generated.judging.as_dict("judge"),
                             "generate_tokens_per_s": round(g.completion_tokens / g.seconds, 1) if g.seconds else 0.0})
    log.info("generate_synthetic: %d planned, %d generated, %d accepted (%s)", plan.planned, written["candidates"],
             written["synthetic"], ", ".join(f"{k} {v}" for k, v in result.dropped_by_reason.most_common()))
    return result


def _quantiles(name: str, values: np.ndarray) -> dict[str, float]:
    """The 10th, 50th and 90th percentiles of the generated rows' ``name`` (MLflow metrics), when any is scored."""
    present = values[np.isfinite(values)]
    if not len(present):
        return {}
    return {f"{name}_p{q}": round(float(v), 4) for q, v in zip((10, 50, 90), np.percentile(present, [10, 50, 90]),
                                                               strict=True)}


def render_report(dt: str, plan: Plan, generated: Generated | None, outcome: Outcome | None, written: dict | None,
                  *, switched_off: bool = False, redecided: bool = False) -> str:
    """Return the stage's Markdown report: the plan, generation, the score distributions and every rejection."""
    lines = [f"# Synthetic generation, dt={dt}", ""]
    if switched_off:
        return "\n".join(lines + ["Synthetic generation is switched off (synthetic.enabled: false).", ""])
    if redecided:
        lines += ["Re-decided from the stored candidates with this run's thresholds: no model was called.", ""]
    else:
        lines += ["## Plan", "", *render_plan(plan), ""]
    if generated is not None:
        g, j = generated.generation, generated.judging
        lines += ["## Generation", "",
                  f"{generated.chunks:,} chunks, {generated.candidates:,} candidate rows ({generated.surplus:,} "
                  f"parsed pairs beyond the plan discarded).",
                  f"Generator: {g.batches:,} batches ({g.reused_batches:,} read back from an earlier try), "
                  f"{g.prompt_tokens:,} prompt and {g.completion_tokens:,} completion tokens in {g.seconds:.1f} s"
                  + (f" ({g.completion_tokens / g.seconds:,.1f} tokens/s)." if g.seconds else "."),
                  f"Judge: {j.batches:,} batches ({j.reused_batches:,} read back), {j.seconds:.1f} s.", ""]
    if outcome is None or written is None:
        return "\n".join(lines)
    domains, accepted = written["domains"], outcome.accepted
    lines += ["## Decisions", "", "| domain | candidates | accepted | " + " | ".join(REASONS) + " |",
              "|---|---:|---:|" + "---:|" * len(REASONS)]
    for domain in sorted(set(domains.tolist())):
        mine = domains == domain
        counts = Counter(outcome.reason[mine & ~accepted].tolist())
        lines.append(f"| {table_cell(str(domain))} | {int(mine.sum()):,} | {int((mine & accepted).sum()):,} | "
                     + " | ".join(f"{counts.get(r, 0):,}" for r in REASONS) + " |")
    judge, quality = written["judge"], written["quality"]
    lines += ["", "## Scores of the generated rows", "", "| score | rows | mean | p10 | median | p90 |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, values in (("judge (1-10)", judge), ("quality (0-1)", quality), ("reward z", outcome.reward_z)):
        present = values[np.isfinite(values)]
        if len(present):
            p10, p50, p90 = np.percentile(present, [10, 50, 90])
            lines.append(f"| {name} | {len(present):,} | {present.mean():.2f} | {p10:.2f} | {p50:.2f} | {p90:.2f} |")
        else:
            lines.append(f"| {name} | 0 | | | | |")
    lines += ["", "## Batch tests against the domain's real rows", "",
              "Length: two-sample Kolmogorov–Smirnov on words per row; vocabulary: Jensen–Shannon divergence of word "
              "frequencies; embeddings: squared MMD with an RBF kernel (median bandwidth) and its permutation "
              "p-value. Collapse compares distinct-2 and embedding dispersion with a real sample of equal size.", "",
              "| domain | rows | length KS (p) | vocab JS | MMD² (p) | distinct-2 vs real | dispersion vs real | "
              "verdict |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for b in outcome.batches:
        if not b.tested:
            lines.append(f"| {table_cell(b.domain)} | {b.rows:,} | | | | | | not tested: too few rows |")
            continue
        verdict = "; ".join(b.shifted + [f"collapse alarm: {c}" for c in b.collapsed]) or "ok"
        lines.append(f"| {table_cell(b.domain)} | {b.rows:,} | {b.length_ks:.3f} ({b.length_p:.3g}) | "
                     f"{b.vocab_js:.3f} | {b.mmd:.4f} ({b.mmd_p:.3g}) | {b.distinct2:.3f} / {b.real_distinct2:.3f} "
                     f"| {b.dispersion:.3f} / {b.real_dispersion:.3f} | {table_cell(verdict)} |")
    lines += ["", f"Accepted: {int(accepted.sum()):,} synthetic rows beside {written['real']:,} real rows.", ""]
    return "\n".join(lines)
