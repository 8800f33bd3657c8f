#!/usr/bin/env python3
"""Many concurrent SSE consumers of `GET /api/v1/jobs/{id}/stream`.

Queues JOBS detached jobs (`POST /api/v1/jobs`, greedy, MAX_TOKENS each) and opens CONSUMERS
streams on each at once, so JOBS x CONSUMERS readers are open together. Every reader counts
the token events it receives and checks them (indices 0, 1, 2, ... and the joined text equal
to the job's stored result). Reports, over all readers: tokens received, first-token latency
(reader connected -> first token event) p50/p99, complete streams, errors, and the wall time.

By default it starts its own `inferno serve` (temp data dir, loopback port, the test model),
as load-tests/lib.sh does for the shell scripts, and stops it on exit. With --url it uses a
running server instead, with an API key (run_inference + use_streaming) from INFERNO_API_KEY;
only loopback addresses are accepted. The key is never printed.

Bounded: at most JOBS x CONSUMERS readers, each with --timeout seconds; the whole run also
stops after --deadline seconds.

usage: sse_load.py [--inferno-bin BIN --model GGUF | --url http://127.0.0.1:8080]
                   [--jobs 4] [--consumers 25] [--max-tokens 64] [--parallel 4] [--threads 2]
                   [--timeout 120] [--deadline 300] [--jsonl-out F]
"""

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_inference as bi  # noqa: E402
from bench_stream import sse_events  # noqa: E402


class Server(bi.InfernoHttp):
    """`inferno serve` with a key that may stream, from bench_inference's server."""

    def make_client(self):
        login = {"username": "admin", "password": self.password}
        token = bi.http_json("POST", f"{self.base}/api/v1/auth/login", login)["token"]
        # not `self.key`: that is the subject's name, which the server class logs
        self.api_key = bi.http_json(
            "POST", f"{self.base}/api/v1/auth/api-keys",
            {"name": "sse-load", "permissions": ["run_inference", "use_streaming", "read_models"],
             "rate_limit_per_minute": 1000000},
            {"Authorization": f"Bearer {token}"})["key"]
        return bi.InfernoClient(self.base, self.api_key, self.args.timeout)


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, round((len(sorted_values) - 1) * p))]


def read_stream(base, key, job, timeout, out):
    """One consumer: every token event of the job, and when the first arrived."""
    rec = {"job": job, "tokens": 0, "pieces": [], "first_token_ms": None, "done": None, "error": None}
    start = time.monotonic()
    try:
        req = urllib.request.Request(f"{base}/api/v1/jobs/{job}/stream",
                                     headers={"X-API-Key": key, "Accept": "text/event-stream"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            for event, data in sse_events(resp):
                if event == "token":
                    if rec["first_token_ms"] is None:
                        rec["first_token_ms"] = (time.monotonic() - start) * 1e3
                    rec["pieces"].append(json.loads(data))
                    rec["tokens"] += 1
                elif event in ("done", "error"):
                    rec["done"] = event
                    break
    except Exception as e:  # noqa: BLE001 - counted and reported
        rec["error"] = type(e).__name__ + ": " + str(e)[:200]
    out.append(rec)


def run(base, key, args):
    jobs = []
    for i in range(args.jobs):
        body = {"model": bi.MODEL_ID, "prompt": bi.PROMPTS[i % len(bi.PROMPTS)],
                "max_tokens": args.max_tokens, "temperature": 0}
        jobs.append(bi.http_json("POST", f"{base}/api/v1/jobs", body, {"X-API-Key": key})["job_id"])
    records, threads = [], []
    start = time.monotonic()
    for job in jobs:
        for _ in range(args.consumers):
            t = threading.Thread(target=read_stream, args=(base, key, job, args.timeout, records), daemon=True)
            t.start()
            threads.append(t)
    end = start + args.deadline
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    wall = time.monotonic() - start
    texts = {}
    for job in jobs:
        result = bi.http_json("GET", f"{base}/api/v1/jobs/{job}", None, {"X-API-Key": key})
        texts[job] = (result.get("result") or {}).get("text")
    complete = errors = 0
    for r in list(records):
        indices = [p["index"] for p in r["pieces"]]
        joined = "".join(p["text"] for p in r["pieces"])
        if r["done"] == "done" and indices == list(range(len(indices))) and joined == texts[r["job"]]:
            complete += 1
        else:
            errors += 1
    unfinished = len(threads) - len(records)
    first = sorted(r["first_token_ms"] for r in records if r["first_token_ms"] is not None)
    return {
        "consumers": len(threads), "jobs": len(jobs), "complete": complete,
        "errors": errors + unfinished, "unfinished": unfinished,
        "tokens_received": sum(r["tokens"] for r in records), "wall_s": wall,
        "first_token_ms_p50": percentile(first, 0.5), "first_token_ms_p99": percentile(first, 0.99),
        "error_samples": sorted({r["error"] for r in records if r["error"]})[:5],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inferno-bin")
    ap.add_argument("--model")
    ap.add_argument("--url", help="a running server on loopback (API key from INFERNO_API_KEY)")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--consumers", type=int, default=25, help="SSE readers per job")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx-per-slot", type=int, default=1024)
    ap.add_argument("--timeout", type=int, default=120, help="per reader, seconds")
    ap.add_argument("--deadline", type=int, default=300, help="whole run, seconds")
    ap.add_argument("--jsonl-out", help="append the figures as JSON lines here")
    args = ap.parse_args()
    if args.jobs * args.consumers > 1000:
        ap.error("at most 1000 readers (the server's [stream] max_streams is 1024)")
    signal.signal(signal.SIGTERM, bi.on_sigterm)
    bi.PROMPTS[:] = [p.replace("\n", " ") for p in bi.PROMPTS]
    server, workdir = None, None
    try:
        if args.url:
            host = urllib.parse.urlparse(args.url).hostname or ""
            if not (host == "localhost" or host == "::1" or host.startswith("127.")):
                ap.error("--url must be a loopback address")
            key = os.environ.get("INFERNO_API_KEY") or ap.error("--url needs INFERNO_API_KEY")
            base = args.url.rstrip("/")
        else:
            if not (args.inferno_bin and args.model):
                ap.error("give --inferno-bin and --model (or --url)")
            args.model = os.path.abspath(args.model)
            workdir = tempfile.mkdtemp(prefix="inferno-sse-load-")
            server = Server(args, workdir)
            base, key = server.base, server.api_key
        print(f"== sse_load: {args.jobs} jobs x {args.consumers} SSE consumers, max_tokens {args.max_tokens}",
              flush=True)
        r = run(base, key, args)
    finally:
        if server:
            server.stop()
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    def fmt(v):
        return "-" if v is None else f"{v:.1f}"

    print(f"\n{r['consumers']} consumers of {r['jobs']} jobs in {r['wall_s']:.2f} s: "
          f"{r['complete']} complete streams, {r['errors']} errors ({r['unfinished']} unfinished)")
    print(f"tokens received {r['tokens_received']} ({r['tokens_received'] / r['wall_s']:.0f}/s over all readers)")
    print(f"first-token latency ms: p50 {fmt(r['first_token_ms_p50'])}  p99 {fmt(r['first_token_ms_p99'])}")
    for e in r["error_samples"]:
        print(f"  error: {e}")
    if args.jsonl_out:
        case = f"{r['jobs']} jobs x {args.consumers} consumers, max_tokens {args.max_tokens}"
        with open(args.jsonl_out, "a") as f:
            for metric, value in (("consumers", r["consumers"]), ("complete streams", r["complete"]),
                                  ("errors", r["errors"]), ("tokens received", r["tokens_received"]),
                                  ("tokens received/s", r["tokens_received"] / r["wall_s"]),
                                  ("first token p50 ms", r["first_token_ms_p50"]),
                                  ("first token p99 ms", r["first_token_ms_p99"]), ("s", r["wall_s"])):
                if value is not None:
                    f.write(json.dumps({"bench": "sse", "case": case, "metric": metric,
                                        "subject": "inferno", "value": value}) + "\n")
    return 0 if r["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
