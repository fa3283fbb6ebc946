"""Text generators for synthetic data and LLM judging: chat prompts in, one ``Generation`` per prompt out, in order.

Two backends behind one ``Generator`` protocol: a local Hugging Face causal LM (``HFGenerator``) and an
OpenAI-compatible ``/chat/completions`` endpoint (``OpenAIGenerator``). The same prompts and seed give the same texts.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import httpx
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from dctp_tasks.config import GeneratorConfig

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
BACKOFF_BASE_SECONDS = 0.5
"""First retry's wait; each later retry waits twice as long, up to ``BACKOFF_CAP_SECONDS``."""
BACKOFF_CAP_SECONDS = 30.0
RETRY_AFTER_CAP_SECONDS = 60.0
"""A server's ``Retry-After`` is honoured up to this long, so a misconfigured server cannot park a task for hours."""
RETRYABLE_STATUSES = frozenset({408, 409, 429})
"""Besides every 5xx: request timeout, conflict (vLLM under load), rate limited."""

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Endpoint:
    """Where an OpenAI-compatible API is: resolved by the DAG layer from an Airflow connection."""

    base_url: str
    """API root, e.g. ``http://127.0.0.1:8000/v1``; requests go to ``{base_url}/chat/completions``."""
    api_key: str | None = field(default=None, repr=False)
    """Sent as ``Authorization: Bearer …``; never logged, never in a repr or an error."""
    headers: dict[str, str] = field(default_factory=dict, repr=False, hash=False)
    """Extra request headers; kept out of the repr too, as gateways put credentials there."""


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str
    """``stop``, or ``length`` when the text hit ``max_new_tokens`` (truncated)."""
    prompt_tokens: int
    completion_tokens: int


class GenerationError(RuntimeError):
    """A request no retry can fix: bad request or config (a 4xx other than 408/409/429), an unparsable response."""


class EndpointUnavailable(ConnectionError):
    """The endpoint kept failing transiently (timeouts, connection errors, 408/409/429, 5xx) through every retry.

    A ``ConnectionError`` is an ``OSError``, so ``errors.is_transient`` lets Airflow retry the task.
    """


class Generator(Protocol):
    identity: dict[str, str]
    """``{"backend", "model", "version"}``: what made the texts; available before the first call (caches key on it)."""

    def generate(self, prompts: list[Messages], seed: int) -> list[Generation]: ...

    def close(self) -> None: ...


def build_generator(cfg: GeneratorConfig, endpoint: Endpoint | None = None) -> Generator:
    """Return the configured backend's generator; the ``openai`` backend needs the ``endpoint`` of ``cfg.conn_id``."""
    if cfg.backend == "transformers":
        return HFGenerator(cfg)
    if endpoint is None:
        raise ValueError(f"synthetic generator backend 'openai' needs an endpoint: resolve the Airflow connection "
                         f"{cfg.conn_id!r} (host = API base URL, password = API key) and pass it")
    return OpenAIGenerator(cfg, endpoint)


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> tuple[str, bool]:
    """Return the prompt text and whether it came from the tokenizer's chat template (so carries its own specials).

    Without a template: ``System: …`` / ``User: …`` / ``Assistant: …`` lines, then ``Assistant:`` to answer.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"]), False


class HFGenerator:
    """A local causal LM (``dctp_tasks.quality.lm.causal_lm``), loaded on the first ``generate``."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        from dctp_tasks.embeddings import model_revision
        from dctp_tasks.quality.lm import default_lm_path

        self.cfg = cfg
        # model_revision(None) would fingerprint the embedding model: name the prepared LM folder instead.
        path = cfg.model if cfg.model is not None else str(default_lm_path())
        self.identity = {"backend": "transformers", "model": cfg.model or DEFAULT_MODEL_NAME,
                         "version": model_revision(path)}
        self._lm: tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None

    def generate(self, prompts: list[Messages], seed: int) -> list[Generation]:
        """Generate in chunks of ``batch_size`` prompts; each chunk is seeded as a whole (``seed`` + its index), so
        a prompt's text depends on the prompts batched with it: same prompts, order, batch size and seed, same texts.
        """
        import torch

        from dctp_tasks.quality.lm import causal_lm

        if self._lm is None:
            self._lm = causal_lm(self.cfg.model, self.cfg.device)
        model, tokenizer = self._lm
        pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
        stops = _eos_ids(model, tokenizer)
        sampling: dict[str, Any] = {"do_sample": self.cfg.temperature > 0}
        if sampling["do_sample"]:
            sampling.update(temperature=self.cfg.temperature, top_p=self.cfg.top_p)
        else:  # a model's generation_config may carry sampling defaults that greedy decoding would warn about
            sampling.update(temperature=None, top_p=None, top_k=None)
        results: list[Generation] = []
        size = self.cfg.batch_size
        for chunk_index, start in enumerate(range(0, len(prompts), size)):
            ids = [_prompt_ids(tokenizer, messages) for messages in prompts[start:start + size]]
            width = max(len(row) for row in ids)
            # Left padding: every row's last prompt token sits at the same position, where generation continues.
            input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids], device=model.device)
            attention = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], device=model.device)
            torch.manual_seed(seed + chunk_index)
            with torch.inference_mode():
                out = model.generate(input_ids=input_ids, attention_mask=attention, pad_token_id=pad,
                                     max_new_tokens=self.cfg.max_new_tokens, **sampling)
            for row, new in zip(ids, out[:, width:].tolist()):
                # Up to and including the first end token; what follows it is padding for rows still generating.
                end = next((i + 1 for i, token in enumerate(new) if token in stops), None)
                finish = "stop" if end is not None or len(new) < self.cfg.max_new_tokens else "length"
                kept = new[:end] if end is not None else new
                results.append(Generation(text=tokenizer.decode(kept, skip_special_tokens=True), finish_reason=finish,
                                          prompt_tokens=len(row), completion_tokens=len(kept)))
        return results

    def close(self) -> None:
        """Drop this generator's reference; the model stays cached for the process (``causal_lm``)."""
        self._lm = None


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> list[int]:
    text, templated = render_prompt(tokenizer, messages)
    # A chat template writes its own BOS and markers; adding specials again would double them.
    return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    declared = getattr(model.generation_config, "eos_token_id", None)
    ids = set(declared if isinstance(declared, list) else [declared])
    ids.add(tokenizer.eos_token_id)
    return ids - {None}


class _RateLimiter:
    """Space request starts at least ``60 / per_minute`` seconds apart across threads."""

    def __init__(self, per_minute: float | None) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:  # reserve a slot under the lock, sleep outside it
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(start - now)


class OpenAIGenerator:
    """An OpenAI-compatible ``/chat/completions`` endpoint (vLLM, Ollama, TGI, a hosted API), ``batch_size``
    requests in flight, rate-limited and retried.

    ``identity["version"]`` is the configured model name, known before any request; what the server reports
    (``system_fingerprint``, else its ``model``) is ``served_fingerprint`` once a request succeeded.
    """

    def __init__(self, cfg: GeneratorConfig, endpoint: Endpoint) -> None:
        import httpx

        self.cfg = cfg
        self.url = f"{endpoint.base_url.rstrip('/')}/chat/completions"
        if httpx.URL(self.url).scheme not in ("http", "https"):
            raise ValueError(f"generator endpoint {self.url!r} needs an http:// or https:// base URL")
        headers = dict(endpoint.headers)
        if endpoint.api_key:
            headers["Authorization"] = f"Bearer {endpoint.api_key}"
        # httpx applies the timeout to connecting, and to each read and write, not to the request as a whole.
        self._client = httpx.Client(headers=headers, timeout=cfg.timeout_seconds,
                                    limits=httpx.Limits(max_connections=cfg.batch_size))
        self._limiter = _RateLimiter(cfg.requests_per_minute)
        self.identity = {"backend": "openai", "model": str(cfg.model), "version": str(cfg.model)}
        self.served_fingerprint: str | None = None

    def generate(self, prompts: list[Messages], seed: int) -> list[Generation]:
        """Send prompt ``i`` with seed ``seed + i`` (servers such as vLLM then sample it reproducibly)."""
        if not prompts:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.cfg.batch_size, len(prompts)),
                                  thread_name_prefix="dctp-generator")
        try:
            futures = [pool.submit(self._complete, messages, seed + i) for i, messages in enumerate(prompts)]
            return [future.result() for future in futures]
        finally:  # a failure stops the prompts not yet sent
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._client.close()

    def _complete(self, messages: Messages, seed: int) -> Generation:
        import httpx

        body = {"model": self.cfg.model, "messages": messages, "max_tokens": self.cfg.max_new_tokens,
                "temperature": self.cfg.temperature, "top_p": self.cfg.top_p, "seed": seed}
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            self._limiter.wait()
            retry_after = None
            try:
                response = self._client.post(self.url, json=body)
            except httpx.UnsupportedProtocol as exc:
                raise GenerationError(f"generator endpoint {self.url}: {exc}") from exc
            except httpx.TransportError as exc:  # timeouts, refused or dropped connections
                last = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return self._parse(response)
                if status not in RETRYABLE_STATUSES and status < 500:  # a redirect too: the base URL is wrong
                    raise GenerationError(f"generator endpoint {self.url} refused the request: HTTP {status}: "
                                          f"{response.text[:300]}")
                last = f"HTTP {status}: {response.text[:300]}"
                retry_after = _retry_after(response)
            if attempt == self.cfg.max_retries:
                break
            delay = retry_after if retry_after is not None else min(BACKOFF_BASE_SECONDS * 2 ** attempt,
                                                                    BACKOFF_CAP_SECONDS)
            log.warning("generator endpoint %s: attempt %d of %d failed (%s); retrying in %.1f s",
                        self.url, attempt + 1, self.cfg.max_retries + 1, last, delay)
            time.sleep(delay)
        raise EndpointUnavailable(f"generator endpoint {self.url} failed {self.cfg.max_retries + 1} times; "
                                  f"last: {last}")

    def _parse(self, response: httpx.Response) -> Generation:
        try:
            payload = response.json()
            choice = payload["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise GenerationError(f"generator endpoint {self.url} answered without choices[0].message.content: "
                                  f"{response.text[:300]!r}") from exc
        if not isinstance(text, str):
            raise GenerationError(f"generator endpoint {self.url} answered with no text content: "
                                  f"{response.text[:300]!r}")
        if self.served_fingerprint is None:
            served = payload.get("system_fingerprint") or payload.get("model")
            self.served_fingerprint = str(served) if served else None
        usage = payload.get("usage") or {}
        return Generation(text=text, finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0))


def _retry_after(response: httpx.Response) -> float | None:
    """Return a numeric ``Retry-After`` in seconds, capped; ``None`` when absent or an HTTP date."""
    try:
        return min(max(float(response.headers["Retry-After"]), 0.0), RETRY_AFTER_CAP_SECONDS)
    except (KeyError, ValueError):
        return None
