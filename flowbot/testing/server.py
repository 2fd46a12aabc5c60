"""A small OpenAI-compatible HTTP server for tests and benchmarks, with fault injection.

It runs an asyncio server in a background thread of the calling process, on 127.0.0.1 and a free
port, so the real client code (``openai``, ``litellm``, ``httpx``) talks real HTTP to it. Requests
are handled concurrently (latency is an ``asyncio.sleep``), so it does not serialize clients.

    >>> from flowbot.testing import Fault, OpenAITestServer
    >>> with OpenAITestServer(reply="pong", latency_s=0.0) as srv:
    ...     srv.fail_next(Fault.rate_limit(retry_after=1))
    ...     srv.base_url.startswith("http://127.0.0.1:")
    True

Replies: ``reply`` is a string, ``fn(body) -> str`` or ``fn(body, choice_index) -> str`` where
``body`` is the request JSON. Faults: :meth:`OpenAITestServer.fail_next` queues faults used by the
next chat requests one each; ``fault_rule(body) -> Fault | None`` decides when the queue is empty.
Only stdlib is used, so core FlowBot does not depend on aiohttp or a web framework.

Structured output: a request's ``response_format`` is checked the way OpenAI checks its shape
(``text``, ``json_object``, or ``json_schema`` with a valid ``name`` and a ``schema`` object;
anything else gets 400) and recorded (:attr:`OpenAITestServer.response_formats`). The server does
not constrain its replies; a reply function can read ``body["response_format"]`` to answer one.

For throughput benchmarks, :func:`subprocess_server` runs the same server in a child process
(``python -m flowbot.testing.server --latency 0.05``), so it does not share the GIL with the client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import re
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator, Union

from flowbot.testing.faults import REASONS, Fault
from flowbot.testing.scripted import count_tokens

ReplyFn = Union[str, Callable[[dict], str], Callable[[dict, int], str]]
FaultRule = Callable[[dict], Union[Fault, None]]


class _Response:
    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None):
        self.status, self.body, self.headers = status, body, headers or {}


def _json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(payload).encode(), headers)


def _error(status: int, message: str, code: str | None = None, **headers: str) -> _Response:
    err = {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
           "param": None, "code": code}
    return _json_response(status, {"error": err}, headers)


class OpenAITestServer:
    """An OpenAI-compatible server on 127.0.0.1 in a background thread.

    Args:
        reply: the answer text, or a function of the request JSON (and optionally the choice index).
        latency_s: time from receiving a chat request to answering it (faulted ones too; a slow
            fault adds its delay on top).
        models: known model names (an unknown one gets 404 ``model_not_found``); None accepts any.
        api_key: when set, requests without ``Authorization: Bearer <api_key>`` get 401.
        honor_n: when False, return one choice whatever ``n`` asks (like many local servers).
        report_usage: when False, omit ``usage`` from answers.
        fault_rule: decides a fault per request when the :meth:`fail_next` queue is empty.
        on_request: called (in the server thread) with each chat request's JSON body as it
            arrives, before it is answered: e.g. to kill a client at its k-th request.

    Counters (read them from the test thread): :attr:`request_count` (chat requests received,
    faulted or not), :attr:`requests` (their JSON bodies), :attr:`statuses` (the HTTP status
    answered to each, in arrival order; 0 for a dropped connection), :attr:`response_formats`,
    :attr:`max_in_flight`.
    """

    def __init__(
        self,
        reply: ReplyFn = "ok",
        *,
        latency_s: float = 0.0,
        models: tuple[str, ...] | list[str] | None = None,
        api_key: str | None = None,
        honor_n: bool = True,
        report_usage: bool = True,
        fault_rule: FaultRule | None = None,
        on_request: Callable[[dict], None] | None = None,
    ) -> None:
        self.reply = reply
        self.on_request = on_request
        self.statuses: list[int] = []
        self._generation = 0
        self.latency_s = latency_s
        self.models = tuple(models) if models is not None else None
        self.api_key = api_key
        self.honor_n = honor_n
        self.report_usage = report_usage
        self.fault_rule = fault_rule
        self.requests: list[dict] = []
        self.max_in_flight = 0
        self.in_flight = 0
        self._faults: deque[Fault] = deque()
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- control (any thread) ------------------------------------------------------------
    @property
    def reply(self) -> ReplyFn:
        return self._reply[0]

    @reply.setter
    def reply(self, value: ReplyFn) -> None:
        """Replace the answer (takes effect for the next request)."""
        # One attribute, so the server thread never sees a reply with the wrong arity flag.
        self._reply = (value, callable(value) and _takes_two_args(value))

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("OpenAITestServer is not started (use it as a context manager)")
        return f"http://127.0.0.1:{self._port}/v1"

    @property
    def request_count(self) -> int:
        return len(self.requests)

    @property
    def response_formats(self) -> list[dict | None]:
        """The ``response_format`` of each chat request received (None where it had none)."""
        return [body.get("response_format") for body in self.requests]

    def fail_next(self, *faults: Fault) -> None:
        """Queue faults: each of the next chat requests consumes one."""
        self._faults.extend(faults)

    def reset(self) -> None:
        """Forget received requests, the in-flight maximum and queued faults."""
        self._generation += 1
        self.requests.clear()
        self.statuses.clear()
        self.max_in_flight = self.in_flight
        self._faults.clear()

    def start(self) -> "OpenAITestServer":
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="openai-test-server", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._startup_error is not None or self._port is None:
            raise RuntimeError(f"OpenAITestServer failed to start: {self._startup_error}")
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> "OpenAITestServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the server thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced to start() if it happens before ready
            self._startup_error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0, backlog=2048)
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, path, headers, body = request
                response = await self._dispatch(method, path, headers, body)
                if response is None:  # a dropped connection
                    writer.transport.abort()
                    break
                writer.write(response)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the client went away (e.g. after its own timeout) or sent garbage
        except asyncio.CancelledError:
            # Only stop() cancels handlers. Finishing normally keeps asyncio's streams
            # callback from logging the cancellation as an error (Python 3.11).
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _dispatch(self, method: str, path: str, headers: dict[str, str],
                        raw: bytes) -> bytes | None:
        path = path.split("?", 1)[0].rstrip("/")
        if method == "GET" and path in ("/v1/models", "/models"):
            names = self.models or ("test-model",)
            return _encode(_json_response(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "flowbot"} for m in names]}))
        if method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
            loop = asyncio.get_running_loop()
            due = loop.time() + self.latency_s
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                response = await self._chat(headers, raw)
                encoded = None if response is None else _encode(response)
                # The answer is ready before the latency wait, so when many timers fire at once
                # only the writes remain: concurrent requests do not queue behind each other.
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                return encoded
            finally:
                self.in_flight -= 1
        return _encode(_error(404, f"no route for {method} {path}"))

    async def _chat(self, headers: dict[str, str], raw: bytes) -> _Response | None:
        index, generation = len(self.statuses), self._generation
        self.statuses.append(0)
        response = await self._chat_response(headers, raw)
        if generation == self._generation:  # not a request from before a reset()
            self.statuses[index] = 0 if response is None else response.status
        return response

    async def _chat_response(self, headers: dict[str, str], raw: bytes) -> _Response | None:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self.requests.append({})
            return _error(400, "request body is not valid JSON")
        self.requests.append(body)
        if self.on_request is not None:
            self.on_request(body)
        if self.api_key is not None:
            given = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if given != self.api_key:
                # Echo the key like some servers do, so tests can check clients redact it.
                return _error(401, f"Incorrect API key provided: {given}", "invalid_api_key")
        model = body.get("model")
        if self.models is not None and model not in self.models:
            return _error(404, f"The model `{model}` does not exist", "model_not_found")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "'messages' must be a non-empty list")
        if "response_format" in body and (problem := _response_format_problem(body["response_format"])):
            return _error(400, problem, "invalid_response_format")
        fault = self._faults.popleft() if self._faults else None
        if fault is None and self.fault_rule is not None:
            fault = self.fault_rule(body)
        if fault is not None:
            return await self._apply(fault, body, headers)
        return self._answer(body)

    async def _apply(self, fault: Fault, body: dict, headers: dict[str, str]) -> _Response | None:
        if fault.kind == "http":
            extra = {} if fault.retry_after is None else {"Retry-After": _fmt(fault.retry_after)}
            return _error(fault.status, fault.message, fault.code, **extra)
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay_s)
            return self._answer(body)
        if fault.kind == "invalid_json":
            return _Response(200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess')
        if fault.kind == "missing_choices":
            return _json_response(200, {"id": "chatcmpl-empty", "object": "chat.completion",
                                        "created": int(time.time()), "model": body.get("model")})
        if fault.kind == "drop":
            return None
        if fault.kind == "empty":
            return self._answer(body, empty=True)
        if fault.kind == "echo_headers":
            return _error(fault.status, "bad request headers: " + json.dumps(headers))
        raise ValueError(f"unknown fault kind {fault.kind!r}")

    def _answer(self, body: dict, empty: bool = False) -> _Response:
        n = int(body.get("n") or 1) if self.honor_n else 1
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else list(stops)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        choices, completion_tokens = [], 0
        for i in range(n):
            try:
                text = "" if empty else self._reply_text(body, i)
            except Exception as exc:  # a broken reply function is a server error, not a crash
                return _error(500, f"reply function failed: {exc!r}")
            text, finish = _truncate(text, stops, max_tokens)
            completion_tokens += count_tokens(text)
            choices.append({"index": i, "finish_reason": finish, "logprobs": None,
                            "message": {"role": "assistant", "content": text}})
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model"), "choices": choices,
        }
        if self.report_usage:
            prompt = sum(count_tokens(str(m.get("content") or "")) for m in body["messages"])
            payload["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                                "total_tokens": prompt + completion_tokens}
        return _json_response(200, payload)

    def _reply_text(self, body: dict, index: int) -> str:
        reply, takes_index = self._reply
        if isinstance(reply, str):
            return reply
        if takes_index:
            return reply(body, index)  # type: ignore[call-arg]
        return reply(body)  # type: ignore[call-arg]


_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _response_format_problem(fmt: Any) -> str | None:
    """What is wrong with a ``response_format`` (as OpenAI would say it), or None."""
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        return "Invalid 'response_format': 'type' must be 'text', 'json_object' or 'json_schema'"
    if fmt["type"] != "json_schema":
        return None
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        return "Missing required parameter: 'response_format.json_schema'"
    if not isinstance(spec.get("name"), str) or not _SCHEMA_NAME.match(spec["name"]):
        return "Invalid 'response_format.json_schema.name': letters, digits, '_' and '-', at most 64"
    if not isinstance(spec.get("schema"), dict):
        return "Invalid 'response_format.json_schema.schema': expected an object"
    if "strict" in spec and not isinstance(spec["strict"], bool):
        return "Invalid 'response_format.json_schema.strict': expected a boolean"
    return None


def _takes_two_args(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _truncate(text: str, stops: list[str], max_tokens: int | None) -> tuple[str, str]:
    finish = "stop"
    for s in stops:
        if s and s in text:
            text = text[: text.index(s)]
    if max_tokens is not None and count_tokens(text) > max_tokens:
        text, finish = " ".join(text.split()[:max_tokens]), "length"
    return text, finish


def _fmt(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def _encode(r: _Response) -> bytes:
    head = [f"HTTP/1.1 {r.status} {REASONS.get(r.status, 'Status')}",
            "Content-Type: application/json", f"Content-Length: {len(r.body)}"]
    head += [f"{k}: {v}" for k, v in r.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + r.body


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    """One HTTP/1.1 request (Content-Length or chunked body), or None at end of stream."""
    line = await reader.readline()
    if not line.strip():
        return None
    method, path, _version = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        key, _, value = h.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()  # the blank line after the last chunk (no trailers)
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        return method, path, headers, bytes(body)
    length = int(headers.get("content-length", "0") or 0)
    return method, path, headers, (await reader.readexactly(length) if length else b"")


@contextlib.contextmanager
def subprocess_server(latency_s: float = 0.0, reply: str = "ok") -> Iterator[str]:
    """Run a test server in a child process; yields its base URL. No fault injection or counters.

    >>> with subprocess_server(latency_s=0.05) as base_url:  # doctest: +SKIP
    ...     ...
    """
    cmd = [sys.executable, "-m", "flowbot.testing.server", "--latency", repr(latency_s), "--reply", reply]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"test server process failed to start (exit code {proc.poll()})")
        yield url
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the child serves until its stdin closes
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> None:
    """Serve until stdin closes; print the base URL on the first line of stdout."""
    parser = argparse.ArgumentParser(prog="python -m flowbot.testing.server",
                                     description="An OpenAI-compatible test server on 127.0.0.1.")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--reply", default="ok", help="the answer text")
    args = parser.parse_args(argv)
    with OpenAITestServer(reply=args.reply, latency_s=args.latency) as srv:
        print(srv.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            sys.stdin.read()


if __name__ == "__main__":
    main()
