"""Hostile inputs, LLM annotation: a misbehaving endpoint on 127.0.0.1 (a raw socket server in a thread, so it can
send what http.server never would: a slow drip, a garbled status line, a body cut short) and hostile report files.
Every server action is bounded; the server stops with the fixture."""

import argparse
import json
import socket
import socketserver
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_annotate_llm import ServerInThread, valid_content  # noqa: E402

from dataset_script.annotate.llm import LLMAnnotator, LLMError  # noqa: E402
from dataset_script.annotate.records import read_reports  # noqa: E402
from trainers.commands.annotate import add_arguments, run  # noqa: E402

DRIP_LIMIT_S = 8.0  # the slow-drip reply ends by itself after this long (a client without a deadline waits it out)


def chat_body(content: str, usage=None) -> bytes:
    reply = {"choices": [{"message": {"role": "assistant", "content": content}}]}
    reply["usage"] = {"prompt_tokens": 100, "completion_tokens": 20} if usage is None else usage
    return json.dumps(reply).encode()


def http_reply(body: bytes, status: str = "200 OK") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


class RawEndpoint(ServerInThread):
    """Plays a script, one action per connection: ("ok", content), ("usage", content, usage), ("drip", content),
    ("bad_status",), ("incomplete", content), ("close",). Unscripted requests get HTTP 500."""

    def __init__(self):
        self.script, self.requests = [], 0
        endpoint = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.settimeout(5)
                try:
                    self._read_request()
                    endpoint.requests += 1
                    action = endpoint.script.pop(0) if endpoint.script else ("status500",)
                    self._play(action)
                except OSError:
                    pass  # the client gave up

            def _read_request(self):
                data = b""
                while b"\r\n\r\n" not in data:
                    data += self.request.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                while len(rest) < length:
                    rest += self.request.recv(65536)

            def _play(self, action):
                kind = action[0]
                if kind == "ok":
                    self.request.sendall(http_reply(chat_body(action[1])))
                elif kind == "usage":
                    self.request.sendall(http_reply(chat_body(action[1], usage=action[2])))
                elif kind == "drip":  # headers at once, then one byte every 0.1 s: every single read is quick
                    reply = http_reply(chat_body(action[1]))
                    head, _, body = reply.partition(b"\r\n\r\n")
                    self.request.sendall(head + b"\r\n\r\n")
                    ends = time.monotonic() + DRIP_LIMIT_S
                    step = max(1, len(body) // int(DRIP_LIMIT_S / 0.1))
                    for start in range(0, len(body), step):
                        self.request.sendall(body[start : start + step])
                        if time.monotonic() < ends:
                            time.sleep(0.1)
                elif kind == "bad_status":
                    self.request.sendall(b"THIS IS NOT HTTP\r\n\r\n")
                elif kind == "incomplete":
                    reply = http_reply(chat_body(action[1]))
                    self.request.sendall(reply[: len(reply) - 40])  # Content-Length promises 40 more bytes
                elif kind == "close":
                    pass  # no reply at all: RemoteDisconnected
                else:
                    self.request.sendall(http_reply(b'{"error": "unscripted"}', "500 Internal Server Error"))

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def endpoint():
    with RawEndpoint() as server:
        yield server


def make_annotator(endpoint, **kwargs):
    options = dict(cache_dir=None, max_retries=2, timeout_s=5.0, backoff_s=0.01)
    options.update(kwargs)
    return LLMAnnotator(endpoint.url, "test-model", None, **options)


def test_slow_drip_is_cut_at_the_total_deadline(endpoint):
    endpoint.script = [("drip", valid_content())]
    started = time.monotonic()
    with pytest.raises(LLMError, match="no complete reply within 1 s"):
        make_annotator(endpoint, timeout_s=1.0, max_retries=0).annotate("FINDINGS: effusion")
    assert time.monotonic() - started < 3.0  # the drip lasts DRIP_LIMIT_S; each byte arrives well within 1 s


def test_slow_drip_then_a_good_reply_is_retried(endpoint):
    endpoint.script = [("drip", valid_content()), ("ok", valid_content())]
    llm = make_annotator(endpoint, timeout_s=1.0, max_retries=1)
    assert llm.annotate("FINDINGS: effusion")[-1]["answer"] == "Effusion"
    assert llm.totals.retries == 1


@pytest.mark.parametrize("broken", [("bad_status",), ("incomplete", valid_content()), ("close",)])
def test_broken_replies_are_retried(endpoint, broken):
    endpoint.script = [broken, ("ok", valid_content())]
    llm = make_annotator(endpoint)
    assert llm.annotate("FINDINGS: effusion")[-1]["answer"] == "Effusion"
    assert llm.totals.retries == 1 and endpoint.requests == 2


@pytest.mark.parametrize("broken", [("bad_status",), ("incomplete", valid_content()), ("close",)])
def test_broken_replies_end_as_a_named_llm_error(endpoint, broken):
    endpoint.script = [broken] * 2
    with pytest.raises(LLMError, match="no valid chain after 2 attempts; last error: no complete reply"):
        make_annotator(endpoint, max_retries=1).annotate("FINDINGS: effusion", where="r7")


@pytest.mark.parametrize("usage", ["lots", [1, 2], {"prompt_tokens": "many", "completion_tokens": 3},
                                   {"prompt_tokens": -1, "completion_tokens": 2.5}])
def test_malformed_usage_keeps_the_chain_and_is_reported(endpoint, usage):
    endpoint.script = [("usage", valid_content(), usage)]
    llm = make_annotator(endpoint)
    assert llm.annotate("FINDINGS: effusion")[-1]["answer"] == "Effusion"
    assert llm.totals.malformed_usage == 1 and "malformed token usage" in llm.totals.summary()


def _cli_args(tmp_path, endpoint_url, reports, *extra):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--reports", str(reports), "--out", str(tmp_path / "data.json"), "--backend", "llm",
                              "--base-url", endpoint_url, "--model", "m", "--cache-dir", "none",
                              "--requests-per-minute", "0", "--no-progress", "--timeout", "2",
                              "--concurrency", "1", *extra])  # scripted replies: in request order


def _reports(tmp_path, count):
    path = tmp_path / "reports.jsonl"
    path.write_text("".join(json.dumps({"uid": f"r{i}", "findings": f"Report {i}.", "image_path": f"r{i}.png"})
                            + "\n" for i in range(count)))
    return path


def test_lenient_run_survives_every_kind_of_broken_reply(endpoint, tmp_path):
    reports = _reports(tmp_path, 5)
    endpoint.script = [("ok", valid_content()), ("bad_status",), ("incomplete", valid_content()),
                       ("usage", valid_content(), "lots"), ("close",), ("ok", valid_content())]
    args = _cli_args(tmp_path, endpoint.url, reports, "--lenient", "--max-retries", "0")
    assert run(args) == 0
    kept = [record["patient_id"] for record in json.loads((tmp_path / "data.json").read_text())]
    assert kept == ["r0", "r3"]
    skipped = [json.loads(line) for line in (tmp_path / "data.json.skipped.jsonl").read_text().splitlines()]
    assert [item["patient_id"] for item in skipped] == ["r1", "r2", "r4"]
    assert all("no complete reply" in item["reason"] for item in skipped)


def test_late_failure_keeps_finished_records_and_the_rerun_resumes(endpoint, tmp_path, capsys):
    reports = _reports(tmp_path, 4)
    endpoint.script = [("ok", valid_content())] * 3 + [("bad_status",)]
    args = _cli_args(tmp_path, endpoint.url, reports, "--max-retries", "0")
    assert run(args) == 1
    error = capsys.readouterr().err
    journal = tmp_path / "data.json.partial.jsonl"
    assert "3 finished records kept in" in error and str(journal) in error
    assert not (tmp_path / "data.json").exists()
    assert endpoint.requests == 4
    endpoint.script = [("ok", valid_content())]
    assert run(args) == 0
    assert endpoint.requests == 5  # only r3 was asked again
    assert "resuming: 3 finished records" in capsys.readouterr().err
    assert [r["patient_id"] for r in json.loads((tmp_path / "data.json").read_text())] == ["r0", "r1", "r2", "r3"]
    assert not journal.exists()


def test_interrupted_run_keeps_finished_records(endpoint, tmp_path, monkeypatch, capsys):
    reports = _reports(tmp_path, 3)
    endpoint.script = [("ok", valid_content())] * 3
    calls = []
    original = LLMAnnotator.annotate

    def interrupt_third(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(LLMAnnotator, "annotate", interrupt_third)
    assert run(_cli_args(tmp_path, endpoint.url, reports)) == 130
    assert "interrupted; 2 finished records kept" in capsys.readouterr().err
    lines = (tmp_path / "data.json.partial.jsonl").read_text().splitlines()
    assert [json.loads(line)["patient_id"] for line in lines[1:]] == ["r0", "r1"]


def test_a_journal_from_other_options_is_not_mixed_in(endpoint, tmp_path, capsys):
    reports = _reports(tmp_path, 2)
    (tmp_path / "data.json.partial.jsonl").write_text(json.dumps({"journal": "stepcot-annotate/1",
                                                                  "backend": "rules"}) + "\n")
    assert run(_cli_args(tmp_path, endpoint.url, reports)) == 1
    assert "another annotation run" in capsys.readouterr().err
    assert endpoint.requests == 0


def test_a_record_cut_short_in_the_journal_is_annotated_again(endpoint, tmp_path):
    reports = _reports(tmp_path, 2)
    endpoint.script = [("ok", valid_content())] * 2
    args = _cli_args(tmp_path, endpoint.url, reports, "--max-retries", "0")
    endpoint.script = [("ok", valid_content()), ("bad_status",)]
    assert run(args) == 1
    journal = tmp_path / "data.json.partial.jsonl"
    with journal.open("a") as handle:
        handle.write('{"patient_id": "r1", "vqa_ch')  # a kill in the middle of a line
    endpoint.script = [("ok", valid_content())]
    assert run(args) == 0
    assert [r["patient_id"] for r in json.loads((tmp_path / "data.json").read_text())] == ["r0", "r1"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json"])
def test_byte_order_mark_in_report_files_is_handled(tmp_path, suffix):
    path = tmp_path / f"reports{suffix}"
    if suffix == ".csv":
        text = "uid,findings,image_path\nr1,Clear lungs.,r1.png\n"
    elif suffix == ".jsonl":
        text = json.dumps({"uid": "r1", "findings": "Clear lungs.", "image_path": "r1.png"}) + "\n"
    else:
        text = json.dumps([{"uid": "r1", "findings": "Clear lungs.", "image_path": "r1.png"}])
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    rows = read_reports(path).rows
    assert [(row.patient_id, row.image_path) for row in rows] == [("r1", "r1.png")]


def test_server_that_never_answers_is_bounded_too(tmp_path):
    """A listener that accepts and never sends a byte: the deadline, not the OS, ends the request."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        llm = LLMAnnotator(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", "m", None, cache_dir=None,
                           max_retries=0, timeout_s=0.5, backoff_s=0.01)
        started = time.monotonic()
        with pytest.raises(LLMError, match="no complete reply"):
            llm.annotate("FINDINGS: x")
        assert time.monotonic() - started < 2.0
    finally:
        listener.close()
