"""Test helpers for the LLM merge code.

``ScriptedServer`` is an OpenAI-compatible chat endpoint for FAULT INJECTION only: each request
gets the action a script picks (a reply, possibly late, or an HTTP error with Retry-After), and
the server records requests and the most it ever had in flight. ``llama_server`` starts the
real embedded llama.cpp server once per test session.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import pytest

from mergeit_core.merge.llama_server import LlamaCppServer, default_gguf_path
from mergeit_core.records import Sample


@dataclass(frozen=True)
class Reply:
    content: str
    delay_s: float = 0.0  # beyond the client's timeout, this is a slow server
    prompt_tokens: int = 11
    completion_tokens: int = 7
    finish_reason: str = "stop"  # "length": cut at max_tokens


@dataclass(frozen=True)
class Fail:
    status: int
    retry_after: str | None = None
    delay_s: float = 0.0


Action = Reply | Fail
Script = Callable[[int, dict[str, Any]], Action]  # (0-based request number, JSON body) -> action


def in_order(*actions: Action, then: Action) -> Script:
    """The given actions for the first requests, ``then`` for every later one."""
    return lambda index, body: actions[index] if index < len(actions) else then


def merge_json(instruction: str = "Merged task", input: str = "", output: str = "Merged answer") -> str:
    return json.dumps({"instruction": instruction, "input": input, "output": output})


def concatenated_merge(index: int, body: dict[str, Any], delay_s: float = 0.0) -> Reply:
    """A merge that carries every source's task and answer (the merge gate keeps it), or a
    judge's score: 9 for a merge, 5 for a source."""
    schema = body["response_format"].get("schema") or body["response_format"]["json_schema"]["schema"]
    if "score" in schema["properties"]:
        return Reply(json.dumps({"score": 9 if "Merged" in last_user_message(body) else 5}), delay_s=delay_s)
    sources = prompt_sources(body)
    return Reply(merge_json(
        instruction="Merged: " + " Then: ".join(source["instruction"] for source in sources),
        input="\n\n".join(source["input"] for source in sources if source["input"]),
        output="\n\n".join(source["output"] for source in sources),
    ), delay_s=delay_s)


def prompt_sources(body: dict[str, Any]) -> list[dict[str, str]]:
    """The samples a merge request asks to merge: the JSON list after the prompt's first line."""
    sources, _ = json.JSONDecoder().raw_decode(last_user_message(body).split("\n", 1)[1])
    return sources


def last_user_message(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]  # names lower-cased
    arrived_at: float


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real server
    timeout = 10  # idle keep-alive connections end on their own
    server: _OwnedHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._send_json(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        owner = self.server.owner
        action = owner._begin(self.path, body, {name.lower(): value for name, value in self.headers.items()})
        try:
            if action.delay_s and owner._stopping.wait(action.delay_s):
                return  # shutting down: drop the request
            if isinstance(action, Fail):
                headers = {"Retry-After": action.retry_after} if action.retry_after else {}
                self._send_json(action.status, {"error": {"message": f"scripted {action.status}"}}, headers)
            else:
                self._send_json(200, _completion(body, action))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before the answer
        finally:
            owner._end()

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "scripted"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": reply.content}, "finish_reason": reply.finish_reason}
        ],
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        },
    }


class _OwnedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog of 5 drops the 6th of many connections opened at once, and
    # the client's SYN retry costs it a whole second (seen as 1 s stragglers at 8 in flight).
    request_queue_size = 128

    def __init__(self, owner: ScriptedServer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.owner = owner

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients drop idle keep-alives
            super().handle_error(request, client_address)


@dataclass
class ScriptedServer:
    """``with ScriptedServer(script) as server:`` serves on ``server.base_url`` until the block ends."""

    script: Script
    requests: list[RecordedRequest] = field(default_factory=list)
    max_in_flight: int = 0
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _httpd: _OwnedHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "the server is not running"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def _begin(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> Action:
        with self._lock:
            index = len(self.requests)
            self.requests.append(RecordedRequest(path, body, headers, time.monotonic()))
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        return self.script(index, body)

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def __enter__(self) -> Self:
        self._httpd = _OwnedHTTPServer(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="scripted-llm", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()  # wakes every handler sleeping in a delay
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def sample(tag: str, n: int) -> Sample:
    return Sample(f"Instruction {n} of group {tag}", "", f"Answer {n} of group {tag}")


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaCppServer]:
    """The real embedded llama.cpp server with the bundled SmolLM2, shared by a test session."""
    with LlamaCppServer(default_gguf_path(), n_ctx=4096) as server:
        yield server
