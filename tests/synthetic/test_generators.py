"""Generators: a tiny random Llama through the transformers backend; a scripted local HTTP server through the
OpenAI-compatible one (retries, timeouts, rate limit, errors that say whether a retry helps, a key never leaked)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

# Set before transformers is imported by these tests: any attempt to reach the Hub fails instead of downloading.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from dctp_tasks.config import GeneratorConfig
from dctp_tasks.embeddings import model_revision
from dctp_tasks.errors import is_transient
from dctp_tasks.quality import lm
from dctp_tasks.synthetic import generators
from dctp_tasks.synthetic.generators import (
    Endpoint,
    EndpointUnavailable,
    Generation,
    GenerationError,
    HFGenerator,
    OpenAIGenerator,
    build_generator,
    render_prompt,
)
from tests.conftest import free_port
from tests.quality.tiny_models import build_tiny_causal_lm

KEY = "sk-test-never-logged-4242"
PROMPTS = [
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "The quick brown fox"}],
    [{"role": "user", "content": "Rivers carry water from the mountains to the sea through valleys and plains."}],
    [{"role": "user", "content": "Numbers like 42"}, {"role": "assistant", "content": "and 2026"},
     {"role": "user", "content": "appear in documents"}],
]


# --- transformers backend ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> str:
    return str(build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm")))


def _hf(model: str, **settings) -> HFGenerator:
    settings = {"device": "cpu", "batch_size": 2, "max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0} | settings
    generator = build_generator(GeneratorConfig(model=model, **settings))
    assert isinstance(generator, HFGenerator)
    return generator


def test_one_generation_per_prompt_and_seeded(tiny_lm):
    generator = _hf(tiny_lm)  # batch_size 2 with 3 prompts: a full chunk and a partial one
    first = generator.generate(PROMPTS, seed=7)

    assert len(first) == len(PROMPTS) and all(isinstance(g, Generation) for g in first)
    assert [g.text for g in generator.generate(PROMPTS, seed=7)] == [g.text for g in first]
    assert [g.text for g in generator.generate(PROMPTS, seed=8)] != [g.text for g in first]
    assert all(0 < g.completion_tokens <= 6 and g.prompt_tokens > 0 for g in first)
    assert generator.generate([], seed=7) == []
    assert generator.identity == {"backend": "transformers", "model": tiny_lm,
                                  "version": model_revision(tiny_lm)}


def test_greedy_batched_equals_one_at_a_time(tiny_lm):
    """Left padding is masked: a prompt decodes the same in a batch of prompts of other lengths as alone."""
    batched = _hf(tiny_lm, batch_size=3, temperature=0.0, max_new_tokens=8).generate(PROMPTS, seed=0)
    alone = _hf(tiny_lm, batch_size=1, temperature=0.0, max_new_tokens=8).generate(PROMPTS, seed=0)

    assert batched == alone
    assert len({g.prompt_tokens for g in batched}) == 3, "prompt lengths differ, so the batch is padded"


def test_max_new_tokens_truncates(tiny_lm):
    results = _hf(tiny_lm, max_new_tokens=3).generate(PROMPTS, seed=1)

    for g in results:
        assert (g.finish_reason, g.completion_tokens) == ("length", 3) or \
            (g.finish_reason == "stop" and g.completion_tokens <= 3)
    assert any(g.finish_reason == "length" for g in results)


def test_end_token_stops_a_row_and_padding_after_it_is_not_counted(tiny_lm, tmp_path):
    """A copy of the model whose generation config also ends on a token the first prompt greedily emits third."""
    import torch
    from transformers import GenerationConfig

    model, tokenizer = lm.causal_lm(tiny_lm, "cpu")
    continuations = []
    for messages in PROMPTS:
        ids = tokenizer(render_prompt(tokenizer, messages)[0], return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=8, pad_token_id=tokenizer.pad_token_id)
        continuations.append(out[0, ids.shape[1]:].tolist())
    stop = next(t for i, t in enumerate(continuations[0]) if i >= 2 and t not in continuations[0][:i])
    copy = tmp_path / "stops"
    shutil.copytree(tiny_lm, copy)
    config = GenerationConfig.from_pretrained(copy)
    config.eos_token_id = [tokenizer.eos_token_id, stop]
    config.save_pretrained(copy)

    results = _hf(str(copy), batch_size=3, temperature=0.0, max_new_tokens=8).generate(PROMPTS, seed=0)

    for g, continuation in zip(results, continuations):
        ends = [i + 1 for i, t in enumerate(continuation) if t in (stop, tokenizer.eos_token_id)]
        expected = ("stop", ends[0]) if ends else ("length", 8)
        assert (g.finish_reason, g.completion_tokens) == expected
    assert results[0].finish_reason == "stop" and results[0].completion_tokens < 8
    assert any(g.completion_tokens > results[0].completion_tokens for g in results[1:]), \
        "another row kept generating, so the first row was padded after its end token"


def test_prompt_tokens_count_the_unpadded_fallback_prompt(tiny_lm):
    _, tokenizer = lm.causal_lm(tiny_lm, "cpu")
    results = _hf(tiny_lm, temperature=0.0).generate(PROMPTS, seed=0)

    assert render_prompt(tokenizer, PROMPTS[0]) == (
        "System: Answer briefly.\nUser: The quick brown fox\nAssistant:", False)
    for g, messages in zip(results, PROMPTS):
        assert g.prompt_tokens == len(tokenizer(render_prompt(tokenizer, messages)[0])["input_ids"])


def test_chat_template_is_used_when_the_tokenizer_has_one(tiny_lm, tmp_path):
    from transformers import AutoTokenizer

    copy = tmp_path / "templated"
    shutil.copytree(tiny_lm, copy)
    tokenizer = AutoTokenizer.from_pretrained(copy)
    tokenizer.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                               "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
    tokenizer.save_pretrained(copy)
    messages = PROMPTS[0]
    expected = "<s>system\nAnswer briefly.</s>\n<s>user\nThe quick brown fox</s>\n<s>assistant\n"

    templated = _hf(str(copy), temperature=0.0).generate([messages], seed=0)[0]
    fallback = _hf(tiny_lm, temperature=0.0).generate([messages], seed=0)[0]

    assert render_prompt(AutoTokenizer.from_pretrained(copy), messages) == (expected, True)
    assert templated.prompt_tokens == len(tokenizer(expected, add_special_tokens=False)["input_ids"])
    assert templated.prompt_tokens != fallback.prompt_tokens


@pytest.mark.skipif(not lm.is_prepared(lm.smollm2_folder()), reason="SmolLM2 not prepared (make install)")
def test_default_model_is_the_prepared_smollm2():
    generator = build_generator(GeneratorConfig(device="cpu", max_new_tokens=4, temperature=0.0))
    folder = str(lm.default_lm_path())

    assert generator.identity == {"backend": "transformers", "model": "SmolLM2-135M-Instruct",
                                  "version": model_revision(folder)}
    [result] = generator.generate([[{"role": "user", "content": "What is the capital of France?"}]], seed=0)
    assert result.text and result.completion_tokens <= 4


# --- OpenAI-compatible backend ----------------------------------------------------------------------------------


class ScriptedServer(ThreadingHTTPServer):
    """``POST /v1/chat/completions`` that records each request and answers by a script, then with success.

    Success echoes the last user message and the request's seed; a message containing ``long`` finishes ``length``.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[str | int] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/"

    def next_behaviour(self, request: dict) -> str | int:
        with self.lock:
            self.requests.append(request)
            return self.script.pop(0) if self.script else "ok"


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.loads(raw)
        behaviour = self.server.next_behaviour({"path": self.path, "headers": dict(self.headers), "body": body,
                                                "time": time.monotonic()})
        if behaviour == "slow":
            time.sleep(1.0)  # the client timed out long ago; its retry gets the next behaviour
        if behaviour == 503:
            self._send(503, b"upstream overloaded")
        elif behaviour == 429:
            self._send(429, b"slow down", {"Retry-After": "0"})
        elif behaviour == 400:
            self._send(400, b'{"error": "unknown field frobnicate"}')
        elif behaviour == "garbage":
            self._send(200, b"{not json")
        elif behaviour == "no_choices":
            self._send(200, b'{"choices": []}')
        else:
            said = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
            text = f"{said} #{body['seed']}"
            answer = {"model": body["model"], "system_fingerprint": "fp-test",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                   "finish_reason": "length" if "long" in said else "stop"}],
                      "usage": {"prompt_tokens": sum(len(m["content"].split()) for m in body["messages"]),
                                "completion_tokens": len(text.split())}}
            self._send(200, json.dumps(answer).encode())

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ScriptedServer()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(generators, "BACKOFF_BASE_SECONDS", 0.01)


def _openai(server: ScriptedServer, **settings) -> OpenAIGenerator:
    settings = {"backend": "openai", "model": "served-model", "batch_size": 1, "max_new_tokens": 32,
                "temperature": 0.5, "top_p": 0.8, "timeout_seconds": 5.0, "max_retries": 3} | settings
    generator = build_generator(GeneratorConfig(**settings), Endpoint(server.base_url, KEY, {"X-Team": "dctp"}))
    assert isinstance(generator, OpenAIGenerator)
    return generator


def _chat(*said: str) -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": s}] for s in said]


def test_openai_answers_in_prompt_order(server):
    generator = _openai(server, batch_size=3)
    assert generator.identity == {"backend": "openai", "model": "served-model", "version": "served-model"}
    assert generator.served_fingerprint is None

    results = generator.generate(_chat("alpha", "beta gamma", "a long one", "delta"), seed=10)
    generator.close()

    assert results == [Generation("alpha #10", "stop", 3, 2), Generation("beta gamma #11", "stop", 4, 3),
                       Generation("a long one #12", "length", 5, 4), Generation("delta #13", "stop", 3, 2)]
    assert generator.served_fingerprint == "fp-test"
    assert len(server.requests) == 4
    for request in server.requests:
        assert request["path"] == "/v1/chat/completions"
        assert request["headers"]["Authorization"] == f"Bearer {KEY}" and request["headers"]["X-Team"] == "dctp"
        assert {k: v for k, v in request["body"].items() if k not in ("messages", "seed")} == {
            "model": "served-model", "max_tokens": 32, "temperature": 0.5, "top_p": 0.8}
    assert sorted(r["body"]["seed"] for r in server.requests) == [10, 11, 12, 13]


def test_transient_failures_are_retried(server, caplog):
    server.script = [503, 429]

    with caplog.at_level(logging.WARNING, logger=generators.__name__):
        [result] = _openai(server).generate(_chat("hello"), seed=3)

    assert result.text == "hello #3"
    assert len(server.requests) == 3 and {r["body"]["seed"] for r in server.requests} == {3}
    assert ["attempt 1 of 4" in m for m in caplog.messages] == [True, False]
    assert "attempt 2 of 4" in caplog.messages[1] and "HTTP 429" in caplog.messages[1]


def test_exhausted_retries_are_transient(server):
    server.script = [503] * 5

    with pytest.raises(EndpointUnavailable) as caught:
        _openai(server, max_retries=2).generate(_chat("hello"), seed=0)

    assert len(server.requests) == 3
    assert isinstance(caught.value, OSError) and is_transient(caught.value)
    assert f"127.0.0.1:{server.server_address[1]}/v1/chat/completions" in str(caught.value)
    assert "HTTP 503" in str(caught.value) and KEY not in str(caught.value)


def test_unreachable_endpoint_is_transient():
    endpoint = Endpoint(f"http://127.0.0.1:{free_port()}/v1", KEY)
    generator = OpenAIGenerator(GeneratorConfig(backend="openai", model="m", max_retries=1), endpoint)

    with pytest.raises(EndpointUnavailable, match="ConnectError") as caught:
        generator.generate(_chat("hello"), seed=0)
    assert is_transient(caught.value)


def test_bad_request_fails_at_once(server):
    server.script = [400]

    with pytest.raises(GenerationError, match="HTTP 400.*unknown field frobnicate") as caught:
        _openai(server, max_retries=5).generate(_chat("hello"), seed=0)

    assert len(server.requests) == 1
    assert not isinstance(caught.value, OSError) and not is_transient(caught.value)


@pytest.mark.parametrize("behaviour", ["garbage", "no_choices"])
def test_unparsable_answer_fails_at_once(server, behaviour):
    server.script = [behaviour]

    with pytest.raises(GenerationError, match="choices"):
        _openai(server).generate(_chat("hello"), seed=0)
    assert len(server.requests) == 1


def test_timeout_is_retried(server):
    server.script = ["slow"]

    start = time.monotonic()
    [result] = _openai(server, timeout_seconds=0.2).generate(_chat("hello"), seed=0)

    assert result.text == "hello #0" and len(server.requests) == 2
    assert time.monotonic() - start < 1.0, "the client gave up on the slow answer instead of waiting for it"


def test_requests_per_minute_spaces_request_starts(server):
    _openai(server, batch_size=5, requests_per_minute=600).generate(_chat(*"abcde"), seed=0)

    arrivals = sorted(r["time"] for r in server.requests)
    assert len(arrivals) == 5 and arrivals[-1] - arrivals[0] >= 0.35


def test_api_key_never_leaks(server, caplog):
    server.script = [503] * 3
    endpoint = Endpoint(server.base_url, KEY)

    with caplog.at_level(logging.DEBUG), pytest.raises(EndpointUnavailable) as caught:
        OpenAIGenerator(GeneratorConfig(backend="openai", model="m", max_retries=2), endpoint).generate(
            _chat("hello"), seed=0)

    assert len(caplog.records) >= 2, "the retries were logged"
    assert KEY not in repr(endpoint) and KEY not in str(caught.value) and KEY not in caplog.text
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_openai_backend_needs_an_endpoint():
    with pytest.raises(ValueError, match="my_llm"):
        build_generator(GeneratorConfig(backend="openai", model="m", conn_id="my_llm"))
