#!/usr/bin/env python3
"""Side-by-side inference benchmark: Inferno's engine in-process, Inferno over HTTP, and
llama.cpp's own server (PyPI `xllamacpp`), on the same model, threads, slots, context and
prompts, one after another in one run (never two generating at once). Prints a table of
absolute figures and the ratios between them; on a shared, noisy machine the ratios are the
figures to read.

Normally started by ops/bench-inference.sh (which builds, fetches the model and prepares
the venv). Client: Python stdlib only (urllib + threads). The llama.cpp server runs in a
child process of this script (`serve-llamacpp` mode, which needs `xllamacpp`).

usage: bench_inference.py --inferno-bin BIN --engine-bench-bin BIN --model GGUF
                          [--threads 2] [--parallel 8] [--ctx-per-slot 1024]
                          [--max-tokens 128] [--rounds 2] [--passes 1] [--timeout 300]
                          [--only inproc,http,llama] [--json-out F] [--keep-logs DIR]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

# Open-ended prompts that a small model continues well past 128 tokens at temperature 0.
PROMPTS = [
    "The following is a long and detailed history of the Roman Empire, from the founding of the city to the fall of Constantinople.\n\nChapter 1.",
    "Photosynthesis is the process by which plants turn light into chemical energy. In this long article we explain every step in detail, starting with",
    "In computer science, a hash table is a data structure that maps keys to values. This tutorial explains, step by step and with many examples,",
    "The best way to learn a new language is a question with many answers. Here is a long, practical guide that covers",
    "Mount Everest is the highest mountain on Earth. The story of the first expeditions to its summit is long and full of",
    "A recipe for pancakes, explained in great detail for complete beginners. First,",
    "The theory of relativity states that the laws of physics are the same for all observers. In this long lecture we will explore",
    "Once upon a time in a small village at the edge of a great forest, there lived an old woman who told long stories. This is one of them:",
]

CONCURRENCY = (4, 8)
MODEL_ID = "gemma-3-270m-q4_k_m"


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(method, url, body=None, headers=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{method} {url}: HTTP {e.code}: {e.read()[:500]!r}") from None


def wait_http_ok(url, deadline_s, proc):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {deadline_s} s")


def track(proc):
    """Record a started server's pid for ops/bench-inference.sh's exit trap (BENCH_PIDFILE)."""
    pidfile = os.environ.get("BENCH_PIDFILE")
    if pidfile:
        with open(pidfile, "a") as f:
            f.write(f"{proc.pid}\n")
    return proc


ABORTING = False


def on_sigterm(*_):
    global ABORTING
    ABORTING = True
    sys.exit(143)


def stop_process(proc, name):
    """SIGTERM the child's process group (it was started in its own session), then SIGKILL;
    SIGKILL at once when aborting (inferno's graceful shutdown waits for in-flight requests)."""
    if proc is None or proc.poll() is not None:
        return
    if ABORTING:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        log(f"{name} did not stop on SIGTERM; killing")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------------------------
# Clients: each returns one normalised record per request.


class InfernoClient:
    name = "inferno-http"

    def __init__(self, base, key, timeout):
        self.base, self.key, self.timeout = base, key, timeout

    def complete(self, prompt, max_tokens):
        start = time.monotonic()
        r = http_json(
            "POST",
            f"{self.base}/api/v1/inference",
            {"model": MODEL_ID, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
            {"X-API-Key": self.key},
            timeout=self.timeout,
        )
        wall = time.monotonic() - start
        t = r["timings"]
        return {
            "text": r["text"],
            "finish": r["finish_reason"],
            "prompt_tokens": r["usage"]["prompt_tokens"],
            "tokens": r["usage"]["completion_tokens"],
            "wall_s": wall,
            "queue_ms": t["queue_ms"],
            "prompt_ms": t["prompt_ms"],
            "ttft_ms": t["queue_ms"] + t["prompt_ms"],
            "decode_tps": t["tokens_per_second"],
        }


class LlamaCppClient:
    name = "llama.cpp-server"

    def __init__(self, base, timeout):
        self.base, self.timeout = base, timeout

    def complete(self, prompt, max_tokens):
        start = time.monotonic()
        r = http_json(
            "POST",
            f"{self.base}/completion",
            {
                "prompt": prompt,
                "n_predict": max_tokens,
                "temperature": 0,
                "cache_prompt": False,
                "stream": False,
            },
            timeout=self.timeout,
        )
        wall = time.monotonic() - start
        t = r["timings"]
        return {
            "text": r["content"],
            "finish": r.get("stop_type", "?"),
            "prompt_tokens": t.get("prompt_n", r.get("tokens_evaluated")),
            "tokens": r["tokens_predicted"],
            "wall_s": wall,
            # llama.cpp reports no queue time; with requests <= slots there is no queueing.
            "queue_ms": 0.0,
            "prompt_ms": t["prompt_ms"],
            "ttft_ms": t["prompt_ms"],
            "decode_tps": t["predicted_per_second"],
        }


# Each server's llama.cpp build as it reports itself (CPU features its kernels use), read
# from its log: `inferno serve` logs "system_info=..." when the backend starts, llama.cpp's
# server logs "system_info: ...".
SYSTEM_INFO = {}


def note_system_info(key, log_path):
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                if "system_info" in line:
                    info = line.split("system_info", 1)[1].lstrip("=: ").strip()
                    SYSTEM_INFO[key] = info
                    return
    except OSError:
        pass


def run_batch(client, prompts, max_tokens):
    """All prompts at once, one thread each; returns (records, wall seconds)."""
    results = [None] * len(prompts)
    errors = []

    def worker(i, p):
        try:
            results[i] = client.complete(p, max_tokens)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"request {i}: {e!r}")

    threads = [threading.Thread(target=worker, args=(i, p), daemon=True) for i, p in enumerate(prompts)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():  # short joins so SIGTERM/SIGINT are handled promptly
            t.join(0.2)
    wall = time.monotonic() - start
    if errors:
        raise RuntimeError(f"{client.name}: " + "; ".join(errors))
    return results, wall


def phase_summary(name, concurrency, records, wall):
    n = max(len(records), 1)
    tokens = sum(r["tokens"] for r in records)
    return {
        "name": name,
        "concurrency": concurrency,
        "requests": len(records),
        "completion_tokens": tokens,
        "completion_tokens_each": [r["tokens"] for r in records],
        "prompt_tokens_each": [r["prompt_tokens"] for r in records],
        "finish_each": [r["finish"] for r in records],
        "wall_s": wall,
        "tokens_per_second": tokens / wall,
        "server_ttft_ms_mean": sum(r["ttft_ms"] for r in records) / n,
        "queue_ms_mean": sum(r["queue_ms"] for r in records) / n,
        "prompt_ms_mean": sum(r["prompt_ms"] for r in records) / n,
        "decode_tokens_per_second_mean": sum(r["decode_tps"] for r in records) / n,
        "client_latency_ms_mean": sum(r["wall_s"] for r in records) * 1e3 / n,
        "texts": [r["text"] for r in records],
    }


def bench_client(client, args):
    log(f"{client.name}: warm-up")
    client.complete("Hello", 8)
    phases = []
    # single: ROUNDS sequential requests, prompts 1..ROUNDS (as engine_bench does)
    records, wall = [], 0.0
    for i in range(args.rounds):
        rs, w = run_batch(client, [PROMPTS[i % len(PROMPTS)]], args.max_tokens)
        records += rs
        wall += w
    phases.append(phase_summary("single", 1, records, wall))
    log(f"{client.name}: single {phases[-1]['tokens_per_second']:.1f} tok/s")
    for n in CONCURRENCY:
        records, wall = [], 0.0
        for _ in range(args.rounds):
            batch = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
            rs, w = run_batch(client, batch, args.max_tokens)
            records += rs
            wall += w
        phases.append(phase_summary(f"concurrent{n}", n, records, wall))
        log(f"{client.name}: concurrency {n} {phases[-1]['tokens_per_second']:.1f} tok/s")
    return phases


# ---------------------------------------------------------------------------------------------
# The three subjects.


def run_engine_bench(args, workdir):
    prompts_file = os.path.join(workdir, "prompts.txt")
    with open(prompts_file, "w") as f:
        f.write("\n".join(p.replace("\n", " ") for p in PROMPTS) + "\n")
    # engine_bench reads one prompt per line, so newlines inside prompts become spaces; the
    # HTTP subjects get the same flattened text.
    cmd = [
        args.engine_bench_bin,
        args.model,
        str(args.threads),
        str(args.parallel),
        str(args.max_tokens),
        prompts_file,
        str(args.rounds),
    ]
    log("in-process: " + " ".join(cmd))
    log_path = os.path.join(workdir, "engine_bench.log")
    with open(log_path, "w") as logf:
        proc = track(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, text=True, start_new_session=True))
        try:
            out, _ = proc.communicate(timeout=args.timeout * 4)
        except subprocess.TimeoutExpired:
            stop_process(proc, "engine_bench")
            raise RuntimeError("engine_bench timed out")
    if proc.returncode != 0:
        raise RuntimeError(f"engine_bench failed ({proc.returncode}); see {log_path}")
    report = None
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            report = json.loads(line[len("BENCH_JSON "):])
        else:
            print(f"  engine_bench | {line}", flush=True)
    if report is None:
        raise RuntimeError("engine_bench printed no BENCH_JSON line")
    return report["phases"]


def run_inferno_http(args, workdir):
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="inferno-data-", dir=workdir)  # fresh per pass
    password = "bench-admin-password-" + os.urandom(6).hex()
    env = dict(os.environ)
    env.update(
        {
            "INFERNO_ADMIN_PASSWORD": password,
            "INFERNO_MODELS__THREADS": str(args.threads),
            "INFERNO_MODELS__PARALLEL": str(args.parallel),
            "INFERNO_MODELS__CTX_PER_SLOT": str(args.ctx_per_slot),
            "INFERNO_LIMITS__REQUESTS_PER_MINUTE": "100000000",
        }
    )
    cmd = [
        args.inferno_bin,
        "serve",
        "--bind",
        f"127.0.0.1:{port}",
        "--data-dir",
        data_dir,
        "--models-dir",
        os.path.dirname(os.path.abspath(args.model)),
    ]
    log("inferno-http: " + " ".join(cmd))
    logf = open(os.path.join(workdir, "inferno.log"), "w")
    proc = track(subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/ready", 120, proc)
        token = http_json("POST", f"{base}/api/v1/auth/login", {"username": "admin", "password": password})["token"]
        key = http_json(
            "POST",
            f"{base}/api/v1/auth/api-keys",
            {
                "name": "bench",
                "permissions": ["run_inference", "read_models"],
                "rate_limit_per_minute": 1000000,  # the API caps keys at 1,000,000/min
            },
            {"Authorization": f"Bearer {token}"},
        )["key"]
        return bench_client(InfernoClient(base, key, args.timeout), args)
    finally:
        stop_process(proc, "inferno")
        logf.close()
        note_system_info("inferno", os.path.join(workdir, "inferno.log"))


def run_llamacpp(args, workdir):
    port = free_port()
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "serve-llamacpp",
        "--model",
        args.model,
        "--port",
        str(port),
        "--threads",
        str(args.threads),
        "--parallel",
        str(args.parallel),
        "--ctx",
        str(args.parallel * args.ctx_per_slot),
    ]
    log("llama.cpp-server: " + " ".join(cmd))
    logf = open(os.path.join(workdir, "llamacpp.log"), "w")
    proc = track(subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/health", 120, proc)
        return bench_client(LlamaCppClient(base, args.timeout), args)
    finally:
        stop_process(proc, "llama.cpp server")
        logf.close()
        note_system_info("llama.cpp", os.path.join(workdir, "llamacpp.log"))


def serve_llamacpp(argv):
    """Child mode: start xllamacpp's embedded llama.cpp HTTP server and block until killed."""
    p = argparse.ArgumentParser(prog="bench_inference.py serve-llamacpp")
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--parallel", type=int, required=True)
    p.add_argument("--ctx", type=int, required=True)
    a = p.parse_args(argv)
    import xllamacpp as xlc  # only this mode needs it

    params = xlc.CommonParams()
    params.model.path = a.model
    params.n_ctx = a.ctx  # total; llama.cpp gives each of the n_parallel slots ctx/n_parallel
    params.n_parallel = a.parallel
    params.cpuparams.n_threads = a.threads
    params.cpuparams_batch.n_threads = a.threads
    params.hostnames = ["127.0.0.1"]
    params.port = a.port
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server = xlc.Server(params)
    print(f"xllamacpp {xlc.__version__} listening on {server.listening_address}", flush=True)
    print(f"system_info: {xlc.get_system_info()}", flush=True)
    while True:
        time.sleep(3600)


# ---------------------------------------------------------------------------------------------
# Report.


def fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def print_report(subjects, args):
    cols = ["inproc", "http", "llama"]
    by = {c: {p["name"]: p for p in subjects.get(c) or []} for c in cols}

    def get(c, phase, key):
        p = by[c].get(phase)
        return None if p is None else p.get(key)

    rows = []  # (label, values per col, higher_is_better, target ratios)
    for phase, label in [("single", "single"), ("concurrent4", "4 concurrent"), ("concurrent8", "8 concurrent")]:
        rows.append((f"{label}: tok/s (wall)", [get(c, phase, "tokens_per_second") for c in cols], True, phase))
    for phase, label in [("single", "single"), ("concurrent4", "4 conc"), ("concurrent8", "8 conc")]:
        rows.append((f"{label}: TTFT ms (server)", [get(c, phase, "server_ttft_ms_mean") for c in cols], False, None))
    for phase, label in [("single", "single"), ("concurrent4", "4 conc"), ("concurrent8", "8 conc")]:
        rows.append((f"{label}: decode tok/s/seq", [get(c, phase, "decode_tokens_per_second_mean") for c in cols], True, None))
    for phase, label in [("single", "single"), ("concurrent4", "4 conc"), ("concurrent8", "8 conc")]:
        rows.append((f"{label}: latency ms (client)", [None, get("http", phase, "client_latency_ms_mean"), get("llama", phase, "client_latency_ms_mean")], False, None))

    targets = {"single": 0.95, "concurrent4": 1.0, "concurrent8": 1.0}
    w = 30
    head = f"{'metric':<{w}} {'in-process':>10} {'inferno-http':>12} {'llama.cpp':>10} | {'http/llama':>10} {'inproc/llama':>12} {'http/inproc':>11}"
    print()
    print(f"model {os.path.basename(args.model)}, threads {args.threads}, slots {args.parallel}, "
          f"ctx {args.parallel * args.ctx_per_slot} ({args.ctx_per_slot}/slot), max_tokens {args.max_tokens}, "
          f"rounds {args.rounds}, passes {args.passes} (best per phase), temperature 0")
    print(head)
    print("-" * len(head))
    for label, (vi, vh, vl), _higher, _phase in rows:
        print(
            f"{label:<{w}} {fmt(vi):>10} {fmt(vh):>12} {fmt(vl):>10} | "
            f"{fmt(ratio(vh, vl), 2):>10} {fmt(ratio(vi, vl), 2):>12} {fmt(ratio(vh, vi), 2):>11}"
        )
    print("-" * len(head))
    print("ratios of tok/s: > 1 means the first is faster; ratios of ms: < 1 means the first is faster")

    print("\ncompletion tokens per request (max_tokens = %d):" % args.max_tokens)
    for c, name in zip(cols, ["in-process", "inferno-http", "llama.cpp"]):
        parts = []
        for phase in ("single", "concurrent4", "concurrent8"):
            each = get(c, phase, "completion_tokens_each")
            total = get(c, phase, "completion_tokens")
            parts.append(f"{phase} {total} {each}" if each is not None else f"{phase} -")
        print(f"  {name:<13} " + "; ".join(parts))
    pt = get("http", "single", "prompt_tokens_each"), get("llama", "single", "prompt_tokens_each")
    print(f"  prompt tokens (single): inferno {pt[0]}, llama.cpp {pt[1]}")

    th, tl = get("http", "single", "texts"), get("llama", "single", "texts")
    if th and tl:
        same = sum(1 for a, b in zip(th, tl) if a == b)
        print(f"  identical greedy output, Inferno vs llama.cpp (single phase): {same}/{len(th)}")

    print("\nllama.cpp builds (CPU features of their kernels, as each server logs them):")
    for key in ("inferno", "llama.cpp"):
        print(f"  {key:<10} {SYSTEM_INFO.get(key, '-')}")

    print("\ntargets:")
    for phase, t in targets.items():
        for num, den, label in (("http", "llama", "Inferno-HTTP/llama.cpp"), ("inproc", "llama", "in-process/llama.cpp")):
            r = ratio(get(num, phase, "tokens_per_second"), get(den, phase, "tokens_per_second"))
            verdict = "-" if r is None else ("MET" if r >= t else "MISSED")
            print(f"  {phase:<12} {label:<24} {fmt(r, 2):>5} (target >= {t:.2f}) {verdict}")
    for phase in targets:
        r = ratio(get("http", phase, "tokens_per_second"), get("inproc", phase, "tokens_per_second"))
        verdict = "-" if r is None else ("MET" if r >= 0.97 else "MISSED")
        print(f"  {phase:<12} {'Inferno-HTTP/in-process':<24} {fmt(r, 2):>5} (target >= 0.97) {verdict}")
    print(
        "\nnotes: TTFT (server) = queue_ms + prompt_ms as each reports it (in-process: the engine's own"
        "\n  timings, the same figures the HTTP API returns; llama.cpp: timings.prompt_ms, it reports no"
        "\n  queue time). Client-side TTFT over HTTP is not measurable: Inferno has no streaming endpoint."
        "\n  decode tok/s/seq: Inferno (n-1)/generate_ms, llama.cpp predicted_n/predicted_ms."
        "\n  Subjects run one after another; on a busy machine compare ratios, and rerun to see the spread."
    )


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "serve-llamacpp":
        return serve_llamacpp(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inferno-bin", required=True)
    ap.add_argument("--engine-bench-bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx-per-slot", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2, help="sequential single requests / batches per concurrency level")
    ap.add_argument("--passes", type=int, default=1, help="repeat the whole sequence; report each phase's fastest pass")
    ap.add_argument("--timeout", type=int, default=300, help="per-request timeout, seconds")
    ap.add_argument("--only", default="inproc,http,llama", help="subset of inproc,http,llama")
    ap.add_argument("--json-out", help="write all figures as JSON here")
    ap.add_argument("--keep-logs", help="copy server logs into this directory")
    args = ap.parse_args()
    # SIGTERM (from the shell's exit trap) unwinds through the `finally` blocks that stop servers
    signal.signal(signal.SIGTERM, on_sigterm)
    if args.parallel < max(CONCURRENCY):
        ap.error(f"--parallel must be >= {max(CONCURRENCY)} so no request queues")
    args.model = os.path.abspath(args.model)
    only = set(args.only.split(","))

    workdir = tempfile.mkdtemp(prefix="inferno-bench-")
    subjects, passes = {}, {}
    try:
        # flatten prompts once so all three subjects see identical text
        global PROMPTS
        PROMPTS = [p.replace("\n", " ") for p in PROMPTS]
        for npass in range(1, args.passes + 1):
            for key, label, fn in (
                ("inproc", "Inferno engine in-process (engine_bench)", run_engine_bench),
                ("http", "Inferno over HTTP", run_inferno_http),
                ("llama", "llama.cpp server (xllamacpp)", run_llamacpp),
            ):
                if key not in only:
                    continue
                print(f"== pass {npass}/{args.passes}: {label} (load average {os.getloadavg()[0]:.2f})", flush=True)
                start = time.monotonic()
                try:
                    phases = fn(args, workdir)
                except Exception as e:  # noqa: BLE001 - report and continue with the others
                    print(f"   FAILED: {e}", flush=True)
                    phases = None
                print(f"   ({time.monotonic() - start:.0f} s, load average {os.getloadavg()[0]:.2f})", flush=True)
                passes.setdefault(key, []).append(phases)
        # per subject and phase, the fastest pass (noise from other work only ever slows a run)
        for key, runs in passes.items():
            ok = [r for r in runs if r]
            if not ok:
                subjects[key] = None
                continue
            subjects[key] = [
                max((r[i] for r in ok), key=lambda ph: ph["tokens_per_second"]) for i in range(len(ok[0]))
            ]
        print_report(subjects, args)
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump({"args": vars(args), "prompts": PROMPTS, "system_info": SYSTEM_INFO, "best": subjects, "passes": passes}, f, indent=1)
        if args.keep_logs:
            os.makedirs(args.keep_logs, exist_ok=True)
            for name in ("engine_bench.log", "inferno.log", "llamacpp.log"):
                src = os.path.join(workdir, name)
                if os.path.exists(src):
                    shutil.copy(src, args.keep_logs)
        return 0 if all(subjects.get(k) for k in only) else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
