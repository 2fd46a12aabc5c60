"""The OpenAI-compatible test server: protocol details, fault queue and rules, counters."""

from __future__ import annotations

import socket

import httpx
import pytest

from flowbot.testing import Fault, OpenAITestServer, subprocess_server

MSGS = [{"role": "user", "content": "hello there"}]


def chat(srv: OpenAITestServer, **body) -> httpx.Response:
    return httpx.post(srv.base_url + "/chat/completions",
                      json={"model": "m", "messages": MSGS, **body}, timeout=5)


def test_answer_has_choices_usage_and_honours_stop_and_max_tokens():
    with OpenAITestServer(reply="alpha beta gamma END delta") as srv:
        plain = chat(srv).json()
        assert plain["choices"][0]["message"] == {"role": "assistant", "content": "alpha beta gamma END delta"}
        assert plain["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
        stopped = chat(srv, stop=["END"]).json()["choices"][0]
        assert stopped["message"]["content"] == "alpha beta gamma " and stopped["finish_reason"] == "stop"
        cut = chat(srv, max_tokens=2).json()["choices"][0]
        assert cut["message"]["content"] == "alpha beta" and cut["finish_reason"] == "length"


def test_reply_function_sees_the_request_and_the_choice_index():
    with OpenAITestServer(reply=lambda body, i: f"{body['model']}#{i}") as srv:
        texts = [c["message"]["content"] for c in chat(srv, n=3).json()["choices"]]
    assert texts == ["m#0", "m#1", "m#2"]


def test_honor_n_false_returns_one_choice_and_usage_can_be_omitted():
    with OpenAITestServer(honor_n=False, report_usage=False) as srv:
        data = chat(srv, n=4).json()
    assert len(data["choices"]) == 1 and "usage" not in data


def test_fault_queue_is_used_in_order_then_normal_answers_resume():
    with OpenAITestServer() as srv:
        srv.fail_next(Fault.rate_limit(retry_after=3), Fault.http(503, "busy"), Fault.missing_choices())
        first, second, third, fourth = (chat(srv) for _ in range(4))
        assert (first.status_code, first.headers["retry-after"]) == (429, "3")
        assert second.status_code == 503 and second.json()["error"]["message"] == "busy"
        assert third.status_code == 200 and "choices" not in third.json()
        assert fourth.json()["choices"][0]["message"]["content"] == "ok"
        assert srv.request_count == 4


def test_invalid_json_and_dropped_connection():
    with OpenAITestServer() as srv:
        srv.fail_next(Fault.invalid_json(), Fault.drop())
        broken = chat(srv)
        assert broken.status_code == 200
        with pytest.raises(ValueError):
            broken.json()
        with pytest.raises(httpx.RemoteProtocolError):
            chat(srv)
        assert chat(srv).status_code == 200  # the server survives both


def test_fault_rule_applies_when_the_queue_is_empty():
    rule = lambda body: Fault.http(500) if "boom" in body["messages"][-1]["content"] else None  # noqa: E731
    with OpenAITestServer(fault_rule=rule) as srv:
        ok = chat(srv)
        bad = httpx.post(srv.base_url + "/chat/completions", timeout=5,
                         json={"model": "m", "messages": [{"role": "user", "content": "boom"}]})
    assert (ok.status_code, bad.status_code) == (200, 500)


def test_auth_models_and_bad_requests():
    with OpenAITestServer(api_key="sk-right", models=["m"]) as srv:
        assert chat(srv).status_code == 401
        headers = {"Authorization": "Bearer sk-right"}
        ok = httpx.post(srv.base_url + "/chat/completions", headers=headers, timeout=5,
                        json={"model": "m", "messages": MSGS})
        unknown = httpx.post(srv.base_url + "/chat/completions", headers=headers, timeout=5,
                             json={"model": "other", "messages": MSGS})
        empty = httpx.post(srv.base_url + "/chat/completions", headers=headers, timeout=5,
                           json={"model": "m", "messages": []})
        listed = httpx.get(srv.base_url + "/models", timeout=5).json()
        missing = httpx.get(srv.base_url + "/nowhere", timeout=5)
    assert ok.status_code == 200
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert empty.status_code == 400
    assert [m["id"] for m in listed["data"]] == ["m"]
    assert missing.status_code == 404


def test_a_failing_reply_function_is_a_500_not_a_dead_server():
    def reply(body):
        raise RuntimeError("scripted failure")

    with OpenAITestServer(reply=reply) as srv:
        first = chat(srv)
        srv.reply = "recovered"
        second = chat(srv)
    assert first.status_code == 500 and "scripted failure" in first.json()["error"]["message"]
    assert second.json()["choices"][0]["message"]["content"] == "recovered"


def test_chunked_request_bodies_are_read():
    def body():
        yield b'{"model": "m", '
        yield b'"messages": [{"role": "user", "content": "hi"}]}'

    with OpenAITestServer() as srv:
        resp = httpx.post(srv.base_url + "/chat/completions", content=body(), timeout=5)
        assert resp.status_code == 200 and srv.requests[-1]["messages"][0]["content"] == "hi"


def test_keep_alive_connection_serves_many_requests_and_reset_clears_counters():
    with OpenAITestServer() as srv, httpx.Client(timeout=5) as client:
        for _ in range(5):
            client.post(srv.base_url + "/chat/completions", json={"model": "m", "messages": MSGS})
        assert srv.request_count == 5 and srv.max_in_flight == 1
        srv.fail_next(Fault.http(500))
        srv.reset()
        assert srv.request_count == 0
        assert client.post(srv.base_url + "/chat/completions",
                           json={"model": "m", "messages": MSGS}).status_code == 200  # fault cleared


def test_stop_frees_the_port_and_base_url_needs_a_started_server():
    srv = OpenAITestServer()
    with pytest.raises(RuntimeError, match="not started"):
        srv.base_url
    with srv:
        port = int(srv.base_url.split(":")[2].split("/")[0])
    with socket.socket() as s:  # nothing listens there any more
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_subprocess_server_answers():
    with subprocess_server(latency_s=0.0, reply="from a child") as url:
        resp = httpx.post(url + "/chat/completions", json={"model": "m", "messages": MSGS}, timeout=5)
    assert resp.json()["choices"][0]["message"]["content"] == "from a child"
