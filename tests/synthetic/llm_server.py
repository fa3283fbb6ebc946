"""A deterministic OpenAI-compatible chat server on loopback, standing in for vLLM in stage tests.

It answers a generation prompt (``Passage: … Write N …``) with N pairs built from the passage's own sentences, so
they are grounded and differ from each other, and a judge prompt (``Grade the answer …``) with ``Score: 8``. A test
switches ``mode`` to make it misbehave the way models do: ``copy`` (repeat the passage), ``same`` (one answer for
every passage), ``boilerplate`` (every answer drowned in the same disclaimer: a batch that drifts from the real
text), ``garbage`` (no pairs), or ``down`` (HTTP 503), and reads ``requests`` to see what was asked.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dctp_tasks.synthetic.generators import Endpoint

_PASSAGE = re.compile(r"Passage:\n(.*?)\n\n(?:Write|Question or instruction)", re.DOTALL)
_COUNT = re.compile(r"Write (\d+) different")
_SENTENCE = re.compile(r"[^.!?]+[.!?]")
BOILERPLATE = (" Please note that this response is provided for general informational purposes only and should not "
               "be relied upon as professional guidance of any kind; always consult a suitably qualified advisor, "
               "review the applicable terms and conditions carefully, and remember that circumstances vary widely "
               "between individuals, organisations and jurisdictions, so outcomes may differ substantially.")
_LABELS = re.compile(r"exactly this format:\n(\w+): .*?\n(\w+): ", re.DOTALL)


class LLMServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = "good"
        self.judge_score = 8
        self.fail_after: int | None = None
        """Answer 503 to every generation request after this many have succeeded (a crash mid-task)."""
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(f"http://127.0.0.1:{self.server_address[1]}/v1", api_key="test-key")

    def generation_requests(self) -> list[dict]:
        return [r for r in self.requests if "Grade the answer" not in r["messages"][-1]["content"]]

    def judge_requests(self) -> list[dict]:
        return [r for r in self.requests if "Grade the answer" in r["messages"][-1]["content"]]

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def answer(self, body: dict) -> tuple[int, str, str]:
        """Return ``(status, content, finish_reason)`` for one request."""
        prompt = body["messages"][-1]["content"]
        if "Grade the answer" in prompt:
            return 200, f"Score: {self.judge_score}", "stop"
        with self.lock:
            done = len(self.generation_requests()) - 1
        if self.mode == "down" or (self.fail_after is not None and done >= self.fail_after):
            return 503, "", ""
        passage = _PASSAGE.search(prompt).group(1).strip()
        count = int(_COUNT.search(prompt).group(1))
        first, second = _LABELS.search(prompt).groups()
        if self.mode == "garbage":
            return 200, "I cannot help with that.", "stop"
        if self.mode == "copy":
            return 200, f"{first}: Repeat the passage.\n{second}: {passage}", "stop"
        if self.mode == "same":
            return 200, (f"{first}: Which city did the old kingdom choose as its seat of government?\n"
                         f"{second}: Its rulers settled by the river, in a walled town called Oldport."), "stop"
        sentences = [s.strip() for s in _SENTENCE.findall(passage) if len(s.split()) >= 6] or [passage]
        pairs = []
        for i in range(count):
            sentence = sentences[i % len(sentences)]
            words = re.findall(r"[A-Za-z0-9']+", sentence)
            answer = sentence + (BOILERPLATE if self.mode == "boilerplate" else "")
            keys = sorted(set(words), key=lambda w: (-len(w), w))[:4]
            pairs.append(f"{first}: In the article, what links {', '.join(keys[:-1])} with {keys[-1]}?\n"
                         f"{second}: {answer}")
        return 200, "\n".join(pairs), "stop"


class _Handler(BaseHTTPRequestHandler):
    server: LLMServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append({**body, "authorization": self.headers.get("Authorization")})
        status, content, finish = self.server.answer(body)
        if status != 200:
            payload = b'{"error": "unavailable"}'
        else:
            payload = json.dumps({"id": "x", "model": body["model"], "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
                "usage": {"prompt_tokens": len(json.dumps(body["messages"])) // 4,
                          "completion_tokens": len(content) // 4}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if status == 503:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:
        pass
