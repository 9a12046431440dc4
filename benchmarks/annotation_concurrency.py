"""Concurrent LLM annotation against a loopback OpenAI-compatible server.

The server answers each request after `--latency` seconds and serves at most `--capacity` requests at once (the rest
queue), like a vLLM / TGI box with a fixed batch. `stepcot annotate --backend llm` runs on `--reports` synthetic
reports at each `--concurrency` given, and on the first `--identity-reports` reports at every concurrency, whose
outputs must be byte-identical. Reports alternate between normal studies and effusions; the server answers each
with the matching chain (so the rule cross-check holds nothing back).

    python benchmarks/annotation_concurrency.py --reports 2000 --concurrency 16 --slow-reports 200 [--json out.json]

`--slow-reports` sets the number of reports for concurrency 1 (200 takes 100 s at 0.5 s per request); seconds per
report are compared, stated as measured on that many reports.
"""

import argparse
import hashlib
import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from modeling_stepcot.configuration_stepcot import LOCATION, NA_OPTION
from trainers.commands.annotate import add_arguments, run

NORMAL = ["No abnormality", NA_OPTION, NA_OPTION, NA_OPTION, NA_OPTION, NA_OPTION, "Normal"]
EFFUSION = ["Increased opacity", "Focal", NA_OPTION, "Pleura/Chest wall", NA_OPTION, "Pleural effusion", "Effusion"]


def chain_content(answers, laterality):
    steps = [{"step": f"Step {i + 1}", "answer": a, "reasoning": f"from the report, step {i + 1}"}
             for i, a in enumerate(answers)]
    steps[LOCATION]["laterality"] = laterality
    return json.dumps({"vqa_chain": steps})


def serve(latency: float, capacity: int):
    slots, counts = threading.Semaphore(capacity), {"requests": 0, "active": 0, "peak": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            report = body["messages"][-1]["content"]
            with slots:
                with lock:
                    counts["requests"] += 1
                    counts["active"] += 1
                    counts["peak"] = max(counts["peak"], counts["active"])
                time.sleep(latency)
                with lock:
                    counts["active"] -= 1
            content = (chain_content(EFFUSION, "right") if "effusion" in report
                       else chain_content(NORMAL, None))
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}],
                                  "usage": {"prompt_tokens": 900, "completion_tokens": 300}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.request_queue_size = 512
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, counts


def write_reports(path: Path, count: int):
    texts = ["No acute cardiopulmonary abnormality. Lungs are clear.", "Small right pleural effusion."]
    path.write_text("".join(json.dumps({"uid": f"s{i:06d}", "findings": f"{texts[i % 2]} Study {i}.",
                                        "image_path": f"images/s{i:06d}.png"}) + "\n" for i in range(count)))


def annotate(work: Path, url: str, reports: Path, concurrency: int, limit: int) -> tuple[float, bytes]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = work / f"c{concurrency}-{limit}.json"
    args = parser.parse_args(["--reports", str(reports), "--out", str(out), "--backend", "llm", "--base-url", url,
                              "--model", "bench", "--cache-dir", "none", "--requests-per-minute", "0",
                              "--concurrency", str(concurrency), "--limit", str(limit), "--no-progress"])
    started = time.perf_counter()
    assert run(args) == 0
    return time.perf_counter() - started, out.read_bytes()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16])
    parser.add_argument("--slow-reports", type=int, default=200, help="reports for concurrency 1")
    parser.add_argument("--identity-reports", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument("--json")
    options = parser.parse_args()
    server, counts = serve(options.latency, options.capacity)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    results = {"latency_s": options.latency, "capacity": options.capacity, "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        reports = work / "reports.jsonl"
        write_reports(reports, max(options.reports, options.slow_reports))
        outputs = {}
        for concurrency in [1, *options.concurrency]:
            limit = options.slow_reports if concurrency == 1 else options.reports
            counts["peak"] = 0
            seconds, output = annotate(work, url, reports, concurrency, limit)
            per_report = seconds / limit
            results["runs"].append({"concurrency": concurrency, "reports": limit, "seconds": round(seconds, 2),
                                    "s_per_report": round(per_report, 4), "peak_in_flight": counts["peak"]})
            print(f"N={concurrency:3d}: {limit} reports in {seconds:.1f} s ({per_report * 1000:.1f} ms/report, "
                  f"peak {counts['peak']} in flight)", flush=True)
            _, outputs[concurrency] = annotate(work, url, reports, concurrency, options.identity_reports) \
                if limit != options.identity_reports else (None, output)
        digests = {c: hashlib.sha256(o).hexdigest()[:16] for c, o in outputs.items()}
        results["identical_output"] = len(set(digests.values())) == 1
        results["output_digests"] = digests
        base = results["runs"][0]["s_per_report"]
        for entry in results["runs"]:
            entry["speedup_vs_1"] = round(base / entry["s_per_report"], 2)
    print(json.dumps(results, indent=1))
    if options.json:
        Path(options.json).write_text(json.dumps(results, indent=1))
    server.shutdown()


if __name__ == "__main__":
    main()
