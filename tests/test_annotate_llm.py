"""LLM backend against a real OpenAI-compatible HTTP server on 127.0.0.1 (http.server in a thread)."""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dataset_script.annotate.llm import LLMAnnotator, LLMError, parse_reply, system_prompt
from modeling_stepcot.configuration_stepcot import (
    DEFAULT_STEP_OPTIONS,
    DEFAULT_STEP_QUESTIONS,
    DIAGNOSIS,
    LOCATION,
    NA_OPTION,
)
from trainers.commands.annotate import add_arguments, run

VALID_ANSWERS = ["Increased opacity", "Focal", NA_OPTION, "Pleura/Chest wall", NA_OPTION, "Pleural effusion",
                 "Effusion"]


def valid_content(answers=VALID_ANSWERS, laterality="right"):
    steps = [{"step": f"Step {i + 1}", "answer": answer, "reasoning": f"step {i + 1} reason"}
             for i, answer in enumerate(answers)]
    steps[LOCATION]["laterality"] = laterality
    return json.dumps({"vqa_chain": steps})


class ServerInThread:
    """Serves `self.server` (a socketserver server on 127.0.0.1) from a daemon thread inside a `with` block; the
    subclass sets `self.server` and `self.url`."""

    def __enter__(self):
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class ScriptedEndpoint(ServerInThread):
    """A chat-completions server that plays a script of replies, one per request, and records the requests."""

    def __init__(self):
        self.script = []  # items: ("ok", content) | ("status", code) | ("slow", seconds, content) | ("raw", bytes)
        self.requests = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append({"path": self.path, "body": body,
                                          "auth": self.headers.get("Authorization")})
                action = endpoint.script.pop(0) if endpoint.script else ("status", 500)
                if action[0] == "status":
                    self.send_response(action[1])
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(b'{"error": "scripted"}')
                    return
                if action[0] == "slow":
                    time.sleep(action[1])
                    action = ("ok", action[2])
                payload = action[1] if action[0] == "raw" else json.dumps({
                    "choices": [{"message": {"role": "assistant", "content": action[1]}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20},
                }).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def endpoint():
    with ScriptedEndpoint() as server:
        yield server


def annotator(endpoint, tmp_path, **kwargs):
    options = dict(cache_dir=tmp_path / "cache", max_retries=2, timeout_s=5.0, backoff_s=0.01,
                   price_per_1k_prompt=0.5, price_per_1k_completion=2.0)
    options.update(kwargs)
    return LLMAnnotator(endpoint.url, "test-model", "secret-key", **options)


def test_prompt_is_stepwise_and_carries_the_schema():
    prompt = system_prompt()
    for question, options in zip(DEFAULT_STEP_QUESTIONS, DEFAULT_STEP_OPTIONS):
        assert question in prompt and json.dumps(options) in prompt
    assert "earlier steps" in prompt and "No Answer" in prompt and '"N/A"' in prompt


def test_valid_reply_becomes_a_full_chain_and_is_cached(endpoint, tmp_path):
    endpoint.script = [("ok", valid_content())]
    llm = annotator(endpoint, tmp_path)
    chain = llm.annotate("FINDINGS: Small right pleural effusion.")
    assert [step["answer"] for step in chain] == VALID_ANSWERS
    assert chain[LOCATION]["laterality"] == "right" and chain[0]["question"] == DEFAULT_STEP_QUESTIONS[0]
    request = endpoint.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer secret-key"
    assert request["body"]["model"] == "test-model" and request["body"]["temperature"] == 0
    assert "Small right pleural effusion" in request["body"]["messages"][-1]["content"]
    assert llm.totals.cost == pytest.approx((100 * 0.5 + 20 * 2.0) / 1000)

    again = annotator(endpoint, tmp_path)  # a rerun: same cache folder, no request
    assert again.annotate("FINDINGS: Small right pleural effusion.") == chain
    assert len(endpoint.requests) == 1 and again.totals.cache_hits == 1 and again.totals.requests == 0


def test_malformed_reply_is_retried_with_the_error_fed_back(endpoint, tmp_path):
    endpoint.script = [("ok", "Sure! Here is the chain: {oops"), ("ok", "```json\n" + valid_content() + "\n```")]
    llm = annotator(endpoint, tmp_path)
    chain = llm.annotate("FINDINGS: effusion")
    assert chain[DIAGNOSIS]["answer"] == "Effusion"
    assert llm.totals.retries == 1
    feedback = endpoint.requests[1]["body"]["messages"]
    assert feedback[-2]["role"] == "assistant" and "not valid JSON" in feedback[-1]["content"]


def test_schema_violations_are_rejected_and_never_cached(endpoint, tmp_path):
    not_an_option = list(VALID_ANSWERS)
    not_an_option[DIAGNOSIS] = "Tuberculosis"
    na_on_step_one = [NA_OPTION] + VALID_ANSWERS[1:]
    endpoint.script = [("ok", valid_content(not_an_option)), ("ok", valid_content(na_on_step_one)),
                       ("ok", json.dumps({"vqa_chain": []}))]
    llm = annotator(endpoint, tmp_path)
    with pytest.raises(LLMError, match=r"report 9: no valid chain after 3 attempts.*7 entries"):
        llm.annotate("FINDINGS: x", where="report 9")
    assert "Tuberculosis" in endpoint.requests[1]["body"]["messages"][-1]["content"]
    assert not list((tmp_path / "cache").rglob("*.json"))


def test_parse_reply_rejects_bad_laterality():
    with pytest.raises(ValueError, match="laterality"):
        parse_reply(valid_content(laterality="upper"))


def test_server_errors_and_slow_replies_are_retried(endpoint, tmp_path):
    endpoint.script = [("status", 503), ("slow", 1.5, valid_content()), ("ok", valid_content())]
    llm = annotator(endpoint, tmp_path, timeout_s=0.5)
    chain = llm.annotate("FINDINGS: effusion")
    assert chain[DIAGNOSIS]["answer"] == "Effusion"
    assert llm.totals.retries == 2 and len(endpoint.requests) == 3


def test_client_errors_are_not_retried(endpoint, tmp_path):
    endpoint.script = [("status", 401)]
    with pytest.raises(LLMError, match="HTTP 401"):
        annotator(endpoint, tmp_path).annotate("FINDINGS: x")
    assert len(endpoint.requests) == 1


def test_non_chat_response_is_rejected(endpoint, tmp_path):
    endpoint.script = [("raw", b"<html>gateway</html>")] * 3
    with pytest.raises(LLMError, match="not an OpenAI chat completion"):
        annotator(endpoint, tmp_path).annotate("FINDINGS: x")


def test_rate_limit_spaces_requests(endpoint, tmp_path):
    endpoint.script = [("ok", valid_content())] * 2
    llm = annotator(endpoint, tmp_path, cache_dir=None, requests_per_minute=300)  # 0.2 s apart
    started = time.monotonic()
    llm.annotate("FINDINGS: a")
    llm.annotate("FINDINGS: b")
    assert time.monotonic() - started >= 0.2


def test_cli_llm_backend_end_to_end(endpoint, tmp_path, monkeypatch, capsys):
    reports = tmp_path / "reports.jsonl"
    reports.write_text("".join(json.dumps({"uid": f"r{i}", "findings": f"Report {i}.", "images": [f"r{i}.png"]}) + "\n"
                               for i in range(3)))
    endpoint.script = [("ok", valid_content()), ("ok", "not json"), ("ok", "still not json"), ("ok", valid_content())]
    monkeypatch.setenv("STEPCOT_TEST_KEY", "k")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "data.json"
    args = parser.parse_args(["--reports", str(reports), "--out", str(out), "--backend", "llm", "--base-url",
                              endpoint.url, "--model", "m", "--api-key-env", "STEPCOT_TEST_KEY", "--cache-dir",
                              str(tmp_path / "cache"), "--max-retries", "1", "--requests-per-minute", "0",
                              "--lenient", "--no-progress", "--concurrency", "1"])  # scripted: in order
    assert run(args) == 0
    records = json.loads(out.read_text())
    assert [r["patient_id"] for r in records] == ["r0", "r2"]  # r1 failed twice and is listed as skipped
    skipped = [json.loads(line) for line in (tmp_path / "data.json.skipped.jsonl").read_text().splitlines()]
    assert skipped[0]["patient_id"] == "r1" and "no valid chain" in skipped[0]["reason"]
    assert endpoint.requests[0]["auth"] == "Bearer k"
    assert "llm: 4 requests (1 retries), 0 cache hits" in capsys.readouterr().err
