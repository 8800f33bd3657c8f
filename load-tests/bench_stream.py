#!/usr/bin/env python3
"""Streaming benchmark, side by side in one run: Inferno's SSE (`"stream": true`), Inferno's
non-streaming path, and llama.cpp's own server streaming (`xllamacpp`, `/completion` with
`"stream": true`), on the same model, threads, slots and prompts; then 50 SSE consumers of
one Inferno job, checked for zero loss.

Client-side time to first token (request sent -> first token event) and tokens/s (completion
tokens / wall time of the phase) for a single request and 8 concurrent ones. The subjects
take turns phase by phase, never two generating at once, the first one rotating each pass.

Normally started by ops/bench-stream.sh. Reuses the servers of bench_inference.py.

usage: bench_stream.py --inferno-bin BIN --model GGUF [--threads 2] [--parallel 8]
                       [--max-tokens 128] [--rounds 2] [--passes 2] [--consumers 50]
                       [--jsonl-out F]

--jsonl-out appends the table's figures as JSON lines (the format of ops/bench-report.py).
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
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_inference as bi  # noqa: E402


def sse_events(resp):
    """(event, data) pairs of a text/event-stream response, as they arrive."""
    event, data = "message", []
    for raw in resp:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" ") if line[5:6] == " " else line[5:])


def post_stream(url, body, headers, timeout):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Accept", "text/event-stream")
    for k, v in headers.items():
        req.add_header(k, v)
    return urllib.request.urlopen(req, timeout=timeout)


class InfernoSse:
    name = "inferno-sse"

    def __init__(self, base, key, timeout):
        self.base, self.key, self.timeout = base, key, timeout

    def complete(self, prompt, max_tokens):
        start = time.monotonic()
        ttft, text, done = None, [], None
        body = {"model": bi.MODEL_ID, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
        with post_stream(f"{self.base}/api/v1/inference", body, {"X-API-Key": self.key}, self.timeout) as resp:
            for event, data in sse_events(resp):
                if event == "token":
                    if ttft is None:
                        ttft = time.monotonic() - start
                    text.append(json.loads(data)["text"])
                elif event == "done":
                    done = json.loads(data)
                    break
                elif event == "error":
                    raise RuntimeError(data)
        wall = time.monotonic() - start
        return {"text": "".join(text), "tokens": done["usage"]["completion_tokens"], "wall_s": wall,
                "ttft_s": ttft if ttft is not None else wall}


class InfernoPlain:
    name = "inferno-json"

    def __init__(self, base, key, timeout):
        self.inner = bi.InfernoClient(base, key, timeout)

    def complete(self, prompt, max_tokens):
        r = self.inner.complete(prompt, max_tokens)
        # No token arrives before the whole answer: the client's first token is at the end.
        return {"text": r["text"], "tokens": r["tokens"], "wall_s": r["wall_s"], "ttft_s": r["wall_s"]}


class LlamaSse:
    name = "llama.cpp-sse"

    def __init__(self, base, timeout):
        self.base, self.timeout = base, timeout

    def complete(self, prompt, max_tokens):
        start = time.monotonic()
        ttft, text, tokens = None, [], None
        body = {"prompt": prompt, "n_predict": max_tokens, "temperature": 0, "cache_prompt": False, "stream": True}
        with post_stream(f"{self.base}/completion", body, {}, self.timeout) as resp:
            for _, data in sse_events(resp):
                chunk = json.loads(data)
                if chunk.get("content"):
                    if ttft is None:
                        ttft = time.monotonic() - start
                    text.append(chunk["content"])
                if chunk.get("stop"):
                    tokens = chunk.get("tokens_predicted") or chunk.get("timings", {}).get("predicted_n")
                    break
        wall = time.monotonic() - start
        return {"text": "".join(text), "tokens": tokens or 0, "wall_s": wall, "ttft_s": ttft if ttft is not None else wall}


def run_batch(client, prompts, max_tokens):
    results, errors = [None] * len(prompts), []

    def worker(i, p):
        try:
            results[i] = client.complete(p, max_tokens)
        except Exception as e:  # noqa: BLE001
            errors.append(f"request {i}: {e!r}")

    threads = [threading.Thread(target=worker, args=(i, p), daemon=True) for i, p in enumerate(prompts)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    if errors:
        raise RuntimeError(f"{client.name}: " + "; ".join(errors))
    return results, time.monotonic() - start


PHASES = ("single", "concurrent8")


def phase(client, name, args):
    records, wall = [], 0.0
    for r in range(args.rounds):
        n = 1 if name == "single" else 8
        prompts = [bi.PROMPTS[(r + i) % len(bi.PROMPTS)] for i in range(n)]
        rs, w = run_batch(client, prompts, args.max_tokens)
        records += rs
        wall += w
    tokens = sum(x["tokens"] for x in records)
    ttfts = sorted(x["ttft_s"] * 1e3 for x in records)
    return {"tokens_per_second": tokens / wall, "ttft_ms_mean": sum(ttfts) / len(ttfts),
            "ttft_ms_p50": ttfts[len(ttfts) // 2], "tokens": tokens, "texts": [x["text"] for x in records]}


def fan_out(base, key, consumers, max_tokens, timeout):
    """One detached job, `consumers` SSE readers of it; every reader must get every piece."""
    job = bi.http_json("POST", f"{base}/api/v1/jobs",
                       {"model": bi.MODEL_ID, "prompt": bi.PROMPTS[0], "max_tokens": max_tokens, "temperature": 0},
                       {"X-API-Key": key})["job_id"]
    got, errors = [None] * consumers, []

    def reader(i):
        try:
            req = urllib.request.Request(f"{base}/api/v1/jobs/{job}/stream", headers={"X-API-Key": key})
            pieces, done = [], None
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                for event, data in sse_events(resp):
                    if event == "token":
                        pieces.append(json.loads(data))
                    elif event in ("done", "error"):
                        done = (event, json.loads(data))
                        break
            got[i] = (pieces, done)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    start = time.monotonic()
    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(consumers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    wall = time.monotonic() - start
    result = bi.http_json("GET", f"{base}/api/v1/jobs/{job}", None, {"X-API-Key": key})
    text = result["result"]["text"]
    complete = 0
    for g in got:
        if g is None:
            continue
        pieces, done = g
        indices = [p["index"] for p in pieces]
        if done and done[0] == "done" and indices == list(range(len(indices))) and "".join(p["text"] for p in pieces) == text:
            complete += 1
    return {"consumers": consumers, "complete": complete, "errors": errors, "wall_s": wall,
            "tokens": result["result"]["usage"]["completion_tokens"]}


class InfernoServer(bi.InfernoHttp):
    def make_client(self):
        login = {"username": "admin", "password": self.password}
        token = bi.http_json("POST", f"{self.base}/api/v1/auth/login", login)["token"]
        # not `self.key`: that is the subject's name, which the server class logs
        self.api_key = bi.http_json(
            "POST", f"{self.base}/api/v1/auth/api-keys",
            {"name": "bench", "permissions": ["run_inference", "use_streaming", "read_models"],
             "rate_limit_per_minute": 1000000},
            {"Authorization": f"Bearer {token}"})["key"]
        return bi.InfernoClient(self.base, self.api_key, self.args.timeout)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "serve-llamacpp":
        return bi.serve_llamacpp(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inferno-bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx-per-slot", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--consumers", type=int, default=50)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--jsonl-out", help="append the table's figures as JSON lines here")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, bi.on_sigterm)
    args.model = os.path.abspath(args.model)
    bi.PROMPTS[:] = [p.replace("\n", " ") for p in bi.PROMPTS]
    workdir = tempfile.mkdtemp(prefix="inferno-bench-stream-")
    servers = []
    try:
        inferno = InfernoServer(args, workdir)
        servers.append(inferno)
        llama = bi.LlamaCpp(args, workdir)
        servers.append(llama)
        clients = [InfernoSse(inferno.base, inferno.api_key, args.timeout),
                   InfernoPlain(inferno.base, inferno.api_key, args.timeout),
                   LlamaSse(llama.base, args.timeout)]
        for c in clients:
            c.complete("Hello", 8)  # warm-up
        results = {c.name: {p: [] for p in PHASES} for c in clients}
        for npass in range(args.passes):
            order = clients[npass % len(clients):] + clients[: npass % len(clients)]
            for ph in PHASES:
                for c in order:
                    r = phase(c, ph, args)
                    results[c.name][ph].append(r)
                    print(f"pass {npass + 1}/{args.passes} {ph:<12} {c.name:<14} {r['tokens_per_second']:7.1f} tok/s "
                          f"TTFT mean {r['ttft_ms_mean']:7.1f} ms", flush=True)
        fan = fan_out(inferno.base, inferno.api_key, args.consumers, args.max_tokens, args.timeout)
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def med(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    print(f"\nmodel {os.path.basename(args.model)}, threads {args.threads}, slots {args.parallel}, "
          f"max_tokens {args.max_tokens}, rounds {args.rounds}, passes {args.passes}, temperature 0")
    print(f"{'phase':<12} {'subject':<14} {'tok/s (best)':>12} {'TTFT ms (median of passes)':>27}")
    for ph in PHASES:
        for c in clients:
            rs = results[c.name][ph]
            print(f"{ph:<12} {c.name:<14} {max(r['tokens_per_second'] for r in rs):12.1f} "
                  f"{med([r['ttft_ms_mean'] for r in rs]):27.1f}")
    print("\npaired ratios per pass (median [each]):")
    for ph in PHASES:
        for num, den in (("inferno-sse", "llama.cpp-sse"), ("inferno-sse", "inferno-json")):
            tps = [a["tokens_per_second"] / b["tokens_per_second"] for a, b in zip(results[num][ph], results[den][ph])]
            ttft = [a["ttft_ms_mean"] / b["ttft_ms_mean"] for a, b in zip(results[num][ph], results[den][ph])]
            print(f"  {ph:<12} {num}/{den:<14} tok/s {med(tps):.2f} {[round(x, 2) for x in tps]}  "
                  f"TTFT {med(ttft):.2f} {[round(x, 2) for x in ttft]}")
    same = sum(a == b for a, b in zip(results["inferno-sse"]["single"][0]["texts"], results["inferno-json"]["single"][0]["texts"]))
    print(f"  greedy single-request text, SSE joined vs JSON: {same}/{args.rounds} identical")
    print(f"\nfan-out: {fan['consumers']} SSE consumers of one job ({fan['tokens']} tokens): "
          f"{fan['complete']} received every piece in order and the job's exact text, "
          f"{len(fan['errors'])} errors, {fan['wall_s']:.2f} s")
    if args.jsonl_out:
        subjects = {"inferno-sse": "inferno-sse", "inferno-json": "inferno-json", "llama.cpp-sse": "llama.cpp"}
        cases = {"single": "single request", "concurrent8": "8 concurrent"}
        with open(args.jsonl_out, "a") as f:
            def figure(case, metric, subject, value):
                f.write(json.dumps({"bench": "stream", "case": case, "metric": metric, "subject": subject,
                                    "value": value, "max_tokens": args.max_tokens, "passes": args.passes}) + "\n")
            for ph in PHASES:
                for name, subject in subjects.items():
                    rs = results[name][ph]
                    figure(cases[ph], "tokens/s", subject, max(r["tokens_per_second"] for r in rs))
                    figure(cases[ph], "TTFT ms (client, median of passes)", subject,
                           med([r["ttft_ms_mean"] for r in rs]))
            case = f"fan-out: {fan['consumers']} SSE consumers of one job"
            figure(case, "complete streams", "inferno-sse", fan["complete"])
            figure(case, "errors", "inferno-sse", len(fan["errors"]))
            figure(case, "s", "inferno-sse", fan["wall_s"])
    return 0 if fan["complete"] == fan["consumers"] else 1


if __name__ == "__main__":
    sys.exit(main())
