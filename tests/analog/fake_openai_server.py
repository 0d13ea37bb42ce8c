"""A real OpenAI-compatible chat-completions server (stdlib http.server) for tests/benchmarks.

Run: python fake_openai_server.py --mode MODE [--delay S]; it prints its port on the first
line of stdout. Modes:
  ok               every request answered with valid agent JSON
  flaky500         each distinct request body gets a 500 the first time, then ok
  rate429          each distinct request body gets a 429 (Retry-After: 0) first, then ok
  malformed_body   each distinct request body gets a 200 with a non-JSON body first
  always500        every request fails with 500
  bad_content      valid HTTP, but the reply is prose instead of agent JSON
  same_question    like ok, but the designer always asks the same question
  cites_passage    like ok, but the designer's question says "According to the passage"
  solver_cites_passage  like ok, but the solver's reasoning says "As the text explains"
  latex            like ok, but the solver writes LaTeX: raw, backslashes unescaped, into
                   its JSON reasoning (LATEX_RAW) and JSON-escaped in its answer
                   (LATEX_ANSWER, with a LaTeX line break)
  reasoning_content  like ok, with the thinking in message.reasoning_content (THINKING)
  reasoning_field  like ok, with the thinking in message.reasoning (THINKING)
  think_only       content null, the thinking in reasoning_content, finish_reason "length"
  think            like ok, with the content "<think>THINKING</think>" + the JSON (the
                   designer's and reviewer's thinking hold a decoy object and "the passage")
  slow             like ok after sleeping --delay seconds (requests overlap: threaded)
  trickle          sends a reply's headers, then one byte every --delay seconds, forever
  echo_headers     every request fails with 401 and a body that echoes the request headers
  truncated        the solver's replies are cut off: half the JSON, finish_reason "length"
  truncated_below_N  like truncated for solver requests with max_tokens below N, else ok
GET /mode/NAME switches the mode (an outage that ends: always500, then ok).
GET /stats returns {"requests", "max_in_flight", "auth", "options", "messages"} (auth: the
Authorization headers seen, so tests can check the key is sent; options: each chat request's
body without its messages, so tests see token budgets and extra body fields; messages: each
chat request's messages).
--replies FILE (a JSON object): canned contents, in any mode that answers: a request whose
last message contains a key is answered with that key's value (an MCQ model's reply per
question) instead of agent JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

LOCK = threading.Lock()
STATE = {"requests": 0, "in_flight": 0, "max_in_flight": 0, "seen": set(), "auth": [],
         "options": [], "messages": []}  # fmt: skip


LATEX_RAW = (
    r"Use $V_{out} = -\frac{R_2}{R_1} V_{in}$ with \omega = 2\pi f, \beta\times\nu, "
    r"10\,k\Omega and \tau = RC; \rho\theta\underline{x} holds."
)
LATEX_ANSWER = r"$A_v = -\frac{R_2}{R_1} = -10$, i.e. 20\,\mathrm{dB} \\ at $\omega \ll \omega_p$"
THINKING = "Okay: the inverting gain is -R2/R1 because the virtual ground holds. So -10."
DECOY = 'Draft: {"question": "Not this one, from the passage?", "verdict": "reject"}'
POINTERS = {"above", "passage", "text", "chapter", "section", "excerpt", "paragraph"}


def agent_reply(body: dict, mode: str) -> str:
    system = body["messages"][0]["content"]
    user = body["messages"][-1]["content"]
    passage = user.split("\n", 1)[1] if "\n" in user else user
    # a textbook's own "this chapter" or "the above", echoed, would be a closed-book reject
    words = [w for w in passage.split() if w.lower().strip(".,;:") not in POINTERS][:6]
    tag = hashlib.sha1(passage.encode()).hexdigest()[:6]
    if "question designer" in system:
        if mode == "same_question":
            return json.dumps({"question": "What is the main idea of negative feedback?"})
        if mode == "cites_passage":
            return json.dumps({"question": f"According to the passage, what is {tag}?"})
        kind = re.search(r"Question type: ([\w -]+) \(", user)  # the designer's ask, echoed
        start = f"{kind.group(1).capitalize()}: explain" if kind else "Explain"
        return json.dumps({"question": f"{start} how {' '.join(words)} works ({tag})."})
    if "expert analog" in system:
        if mode == "latex":
            reasoning = json.dumps(f"Step 1: {LATEX_RAW}")[1:-1].replace("\\\\", "\\")
            return '{"reasoning": "' + reasoning + '", "answer": ' + json.dumps(LATEX_ANSWER) + "}"
        if mode == "solver_cites_passage":
            return json.dumps(
                {"reasoning": "As the text explains, the gain is set.", "answer": "x"}
            )
        return json.dumps(
            {
                "reasoning": f"Step 1: recall that {' '.join(words)}. Step 2: hence.",
                "answer": " ".join(words),
            }
        )
    return json.dumps({"verdict": "accept", "feedback": "supported by the passage"})


def is_solver(body: dict) -> bool:
    return "expert analog" in body["messages"][0]["content"]


def cut_off(mode: str, max_tokens: int) -> bool:
    if mode == "truncated":
        return True
    if mode.startswith("truncated_below_"):
        return max_tokens < int(mode.removeprefix("truncated_below_"))
    return False


class Handler(BaseHTTPRequestHandler):
    mode = "ok"
    delay = 0.0
    replies: ClassVar[dict[str, str]] = {}

    def log_message(self, *args) -> None:  # quiet
        pass

    def send(self, code: int, payload: bytes, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        if self.path.startswith("/mode/"):
            Handler.mode = self.path.removeprefix("/mode/")
            return self.send(200, b"{}")
        with LOCK:
            stats = {k: v for k, v in STATE.items() if k != "seen"}
        self.send(200, json.dumps(stats).encode())

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with LOCK:
            STATE["requests"] += 1
            STATE["in_flight"] += 1
            STATE["max_in_flight"] = max(STATE["max_in_flight"], STATE["in_flight"])
            STATE["auth"].append(self.headers.get("Authorization"))
            digest = hashlib.sha1(raw).hexdigest()
            first = digest not in STATE["seen"]
            STATE["seen"].add(digest)
        try:
            self.answer(raw, first)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client was killed mid-request (the resume tests do that)
        finally:
            with LOCK:
                STATE["in_flight"] -= 1

    def answer(self, raw: bytes, first: bool) -> None:
        mode = self.mode
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self.send(404, b'{"error": "no such route"}')
        if mode == "slow":
            time.sleep(self.delay)
        if mode == "trickle":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            while True:
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(self.delay)
        if mode == "echo_headers":
            echo = {"error": "bad key", "authorization": self.headers.get("Authorization"),
                    "headers": dict(self.headers)}  # fmt: skip
            return self.send(401, json.dumps(echo).encode())
        if mode == "always500" or (mode == "flaky500" and first):
            return self.send(500, b'{"error": "internal"}')
        if mode == "rate429" and first:
            return self.send(429, b'{"error": "slow down"}', {"Retry-After": "0"})
        if mode == "malformed_body" and first:
            return self.send(200, b"<html>upstream proxy error</html>")
        body = json.loads(raw)
        with LOCK:
            STATE["options"].append({k: v for k, v in body.items() if k != "messages"})
            STATE["messages"].append(body["messages"])
        finish = "stop"
        last = body["messages"][-1]["content"] if self.replies else ""
        canned = [v for k, v in self.replies.items() if k in last]
        if canned:
            content = canned[0]
        elif mode == "bad_content":
            content = "Sure! Here is a great question about op-amps for you."
        else:
            content = agent_reply(body, mode)
        if is_solver(body) and cut_off(mode, body.get("max_tokens", 0)):
            content, finish = content[: len(content) // 2], "length"
        message = {"role": "assistant", "content": content}
        thinking_key = {"reasoning_content": "reasoning_content", "reasoning_field": "reasoning"}
        if mode in thinking_key:
            message[thinking_key[mode]] = THINKING
        if mode == "think_only":
            message.update(content=None, reasoning_content=THINKING)
            finish = "length"
        if mode == "think":
            thought = THINKING if is_solver(body) else f"{DECOY} as the passage says"
            message["content"] = f"<think>\n{thought}\n</think>\n\n{content}"
        reply = {
            "id": "cmpl-1",
            "object": "chat.completion",
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10},
        }
        self.send(200, json.dumps(reply).encode())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="ok")
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--replies", default=None)
    args = parser.parse_args()
    Handler.mode, Handler.delay = args.mode, args.delay
    if args.replies:
        with open(args.replies, encoding="utf-8") as f:
            Handler.replies = json.load(f)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
