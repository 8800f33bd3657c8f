#!/usr/bin/env python3
"""Side-by-side inference benchmark: Inferno's engine in-process, Inferno over HTTP, and
llama.cpp's own server (PyPI `xllamacpp`), on the same model, threads, slots, context and
prompts, in one run. All three are started once and stay loaded; each phase (single request,
4 and 8 concurrent) runs on one subject after the other, never two generating at once, and
the first subject rotates each pass. Prints a table of the best pass per phase, the ratios
between the subjects, and the paired ratios of each pass; on a shared, noisy machine the
ratios are the figures to read.

Normally started by ops/bench-inference.sh (which builds, fetches the model and prepares
the venv). Client: Python stdlib only (urllib + threads). The llama.cpp server runs in a
child process of this script (`serve-llamacpp` mode, which needs `xllamacpp`).

usage: bench_inference.py --inferno-bin BIN --engine-bench-bin BIN --model GGUF
                          [--threads 2] [--parallel 8] [--ctx-per-slot 1024]
                          [--max-tokens 128] [--rounds 2] [--passes 1] [--timeout 300]
                          [--only inproc,http,llama] [--json-out F] [--jsonl-out F]
                          [--keep-logs DIR]

--jsonl-out appends the table's figures as JSON lines (the format of ops/bench-report.py).
"""

import argparse
import json
import os
import queue
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


PHASES = ["single"] + [f"concurrent{n}" for n in CONCURRENCY]


def client_phase(client, phase, args):
    """One phase over HTTP, as engine_bench runs it in-process: `single` is ROUNDS sequential
    requests (prompts 1..ROUNDS); `concurrentN` is ROUNDS batches of N requests at once."""
    records, wall = [], 0.0
    if phase == "single":
        for i in range(args.rounds):
            rs, w = run_batch(client, [PROMPTS[i % len(PROMPTS)]], args.max_tokens)
            records += rs
            wall += w
        n = 1
    else:
        n = int(phase[len("concurrent"):])
        for _ in range(args.rounds):
            rs, w = run_batch(client, [PROMPTS[i % len(PROMPTS)] for i in range(n)], args.max_tokens)
            records += rs
            wall += w
    return phase_summary(phase, n, records, wall)


# ---------------------------------------------------------------------------------------------
# The three subjects. Each is started once and stays up (model loaded, warmed up) for the whole
# run; the driver then asks them for one phase at a time, in turn, so that slow drift of a
# shared machine lands on all three alike instead of on whichever ran during it.


class LineReader:
    """Lines from a pipe, read by a thread so that waiting for one can time out."""

    def __init__(self, pipe):
        self.queue = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self.thread.start()

    def _pump(self, pipe):
        for line in pipe:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def next(self, timeout):
        end = time.monotonic() + timeout
        while True:  # short waits so SIGTERM/SIGINT are handled promptly
            try:
                return self.queue.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() > end:
                    raise RuntimeError(f"no output for {timeout} s") from None


class InProcess:
    key, label = "inproc", "Inferno engine in-process (engine_bench)"

    def __init__(self, args, workdir):
        self.args = args
        prompts_file = os.path.join(workdir, "prompts.txt")
        with open(prompts_file, "w") as f:
            f.write("\n".join(PROMPTS) + "\n")  # one per line: PROMPTS are flattened in main()
        cmd = [
            args.engine_bench_bin,
            args.model,
            str(args.threads),
            str(args.parallel),
            str(args.max_tokens),
            prompts_file,
            str(args.rounds),
            "stdin",
        ]
        log("in-process: " + " ".join(cmd))
        self.logf = open(os.path.join(workdir, "engine_bench.log"), "w")
        self.proc = track(
            subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.logf, text=True, start_new_session=True
            )
        )
        self.lines = LineReader(self.proc.stdout)
        try:
            self._until(lambda line: line == "READY", 120)
        except BaseException:
            self.stop()
            raise

    def _until(self, done, timeout):
        while True:
            line = self.lines.next(timeout)
            if line is None:
                raise RuntimeError(f"engine_bench exited ({self.proc.wait()}); see engine_bench.log")
            if done(line):
                return line
            print(f"  engine_bench | {line}", flush=True)

    def phase(self, phase):
        self.proc.stdin.write(phase + "\n")
        self.proc.stdin.flush()
        line = self._until(lambda line: line.startswith("PHASE_JSON "), self.args.timeout * 4)
        return json.loads(line[len("PHASE_JSON "):])

    def stop(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            pass
        stop_process(self.proc, "engine_bench")
        self.logf.close()


class Server:
    """An HTTP subject: a server process in its own session, and a client for it that
    `make_client` returns once the server answers on `ready_path`."""

    info_key = None  # SYSTEM_INFO key under which its llama.cpp build is reported

    def __init__(self, args, workdir, cmd, env, ready_path, log_name):
        self.args = args
        self.log_path = os.path.join(workdir, log_name)
        log(f"{self.key}: " + " ".join(cmd))
        self.logf = open(self.log_path, "w")
        self.proc = track(
            subprocess.Popen(cmd, env=env, stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True)
        )
        try:
            wait_http_ok(self.base + ready_path, 120, self.proc)
            self.client = self.make_client()
            log(f"{self.key}: warm-up")
            self.client.complete("Hello", 8)
        except BaseException:
            self.stop()
            raise

    def phase(self, phase):
        return client_phase(self.client, phase, self.args)

    def stop(self):
        stop_process(self.proc, self.key)
        self.logf.close()
        note_system_info(self.info_key, self.log_path)


class InfernoHttp(Server):
    key, label, info_key = "http", "Inferno over HTTP", "inferno"

    def __init__(self, args, workdir):
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        data_dir = tempfile.mkdtemp(prefix="inferno-data-", dir=workdir)
        self.password = "bench-admin-password-" + os.urandom(6).hex()
        env = dict(os.environ)
        env.update(
            {
                "INFERNO_ADMIN_PASSWORD": self.password,
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
        super().__init__(args, workdir, cmd, env, "/ready", "inferno.log")

    def make_client(self):
        login = {"username": "admin", "password": self.password}
        token = http_json("POST", f"{self.base}/api/v1/auth/login", login)["token"]
        key = http_json(
            "POST",
            f"{self.base}/api/v1/auth/api-keys",
            {
                "name": "bench",
                "permissions": ["run_inference", "read_models"],
                "rate_limit_per_minute": 1000000,  # the API caps keys at 1,000,000/min
            },
            {"Authorization": f"Bearer {token}"},
        )["key"]
        return InfernoClient(self.base, key, self.args.timeout)


class LlamaCpp(Server):
    key, label, info_key = "llama", "llama.cpp server (xllamacpp)", "llama.cpp"

    def __init__(self, args, workdir):
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
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
        if getattr(args, "swa_full", False):
            cmd.append("--swa-full")
        super().__init__(args, workdir, cmd, None, "/health", "llamacpp.log")

    def make_client(self):
        return LlamaCppClient(self.base, self.args.timeout)


def serve_llamacpp(argv):
    """Child mode: start xllamacpp's embedded llama.cpp HTTP server and block until killed."""
    p = argparse.ArgumentParser(prog="bench_inference.py serve-llamacpp")
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--parallel", type=int, required=True)
    p.add_argument("--ctx", type=int, required=True)
    p.add_argument("--swa-full", action="store_true", help="full-size sliding-window KV cache (prefix reuse on Gemma 3)")
    a = p.parse_args(argv)
    import xllamacpp as xlc  # only this mode needs it

    params = xlc.CommonParams()
    params.model.path = a.model
    params.n_ctx = a.ctx  # total; llama.cpp gives each of the n_parallel slots ctx/n_parallel
    params.n_parallel = a.parallel
    params.cpuparams.n_threads = a.threads
    params.cpuparams_batch.n_threads = a.threads
    if a.swa_full:
        params.swa_full = True
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


def print_report(subjects, passes, args):
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

    # paired ratios: within one pass the subjects ran the same phase back to back, so each pass
    # gives one ratio per pair that drift between passes does not bias
    def paired(num, den, phase):
        i = PHASES.index(phase)
        out = []
        for a, b in zip(passes.get(num) or [], passes.get(den) or []):
            if a and b and a[i] and b[i]:
                out.append(a[i]["tokens_per_second"] / b[i]["tokens_per_second"])
        return out

    def median(xs):
        xs = sorted(xs)
        n = len(xs)
        return None if n == 0 else (xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2)

    pairs = (("http", "llama", "Inferno-HTTP/llama.cpp"), ("inproc", "llama", "in-process/llama.cpp"),
             ("http", "inproc", "Inferno-HTTP/in-process"))
    print("\npaired ratios of tok/s, one per pass (median [min..max]):")
    for phase in PHASES:
        for num, den, label in pairs:
            rs = paired(num, den, phase)
            if rs:
                print(f"  {phase:<12} {label:<24} {fmt(median(rs), 2)} [{fmt(min(rs), 2)}..{fmt(max(rs), 2)}]  "
                      + " ".join(fmt(r, 2) for r in rs))

    targets = {"single": 0.95, "concurrent4": 1.0, "concurrent8": 1.0}
    print("\ntargets (best pass of each / median of the paired ratios):")
    for phase in PHASES:
        for num, den, label in pairs:
            t = 0.97 if den == "inproc" else targets[phase]
            best = ratio(get(num, phase, "tokens_per_second"), get(den, phase, "tokens_per_second"))
            med = median(paired(num, den, phase))
            verdict = "-" if best is None or med is None else ("MET" if min(best, med) >= t else "MISSED")
            print(f"  {phase:<12} {label:<24} {fmt(best, 2):>5} / {fmt(med, 2):>5} (target >= {t:.2f}) {verdict}")
    print(
        "\nnotes: TTFT (server) = queue_ms + prompt_ms as each reports it (in-process: the engine's own"
        "\n  timings, the same figures the HTTP API returns; llama.cpp: timings.prompt_ms, it reports no"
        "\n  queue time). Client-side TTFT over HTTP is not measurable: Inferno has no streaming endpoint."
        "\n  decode tok/s/seq: Inferno (n-1)/generate_ms, llama.cpp predicted_n/predicted_ms."
        "\n  All three stay up for the whole run; each phase runs on one subject after the other, the"
        "\n  first subject rotating each pass. Never two generate at once."
    )


JSONL_SUBJECTS = {"inproc": "inferno-inproc", "http": "inferno-http", "llama": "llama.cpp"}
JSONL_CASES = {"single": "single request", "concurrent4": "4 concurrent", "concurrent8": "8 concurrent"}


def write_jsonl(path, subjects, passes, args):
    """The best pass per phase and subject, the medians of the paired per-pass ratios, and
    each server's llama.cpp build, as JSON lines for ops/bench-report.py."""
    lines = []

    def figure(case, metric, subject, value):
        if value is not None:
            lines.append({"bench": "inference", "case": case, "metric": metric, "subject": subject,
                          "value": value, "max_tokens": args.max_tokens, "passes": args.passes})

    for key, phases in subjects.items():
        for ph in phases or []:
            case = JSONL_CASES[ph["name"]]
            figure(case, "tokens/s", JSONL_SUBJECTS[key], ph["tokens_per_second"])
            figure(case, "TTFT ms (server)", JSONL_SUBJECTS[key], ph["server_ttft_ms_mean"])
    for i, phase in enumerate(PHASES):
        for num in ("http", "inproc"):
            ratios = sorted(a[i]["tokens_per_second"] / b[i]["tokens_per_second"]
                            for a, b in zip(passes.get(num) or [], passes.get("llama") or [])
                            if a and b and a[i] and b[i])
            if ratios:
                n = len(ratios)
                med = ratios[n // 2] if n % 2 else (ratios[n // 2 - 1] + ratios[n // 2]) / 2
                figure(JSONL_CASES[phase], "tokens/s ÷ llama.cpp, median of paired passes",
                       JSONL_SUBJECTS[num], med)
    for key, info in SYSTEM_INFO.items():
        lines.append({"info": f"llama.cpp build of {key} (system_info)", "value": info})
    with open(path, "a") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")


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
    ap.add_argument("--jsonl-out", help="append the table's figures as JSON lines here")
    ap.add_argument("--keep-logs", help="copy server logs into this directory")
    args = ap.parse_args()
    # SIGTERM (from the shell's exit trap) unwinds through the `finally` blocks that stop servers
    signal.signal(signal.SIGTERM, on_sigterm)
    if args.parallel < max(CONCURRENCY):
        ap.error(f"--parallel must be >= {max(CONCURRENCY)} so no request queues")
    args.model = os.path.abspath(args.model)
    only = set(args.only.split(","))

    workdir = tempfile.mkdtemp(prefix="inferno-bench-")
    # passes[key][pass index] = that pass's phases in PHASES order (None where one failed)
    subjects, passes, running = {}, {}, []
    try:
        # flatten prompts once so all three subjects see identical text (engine_bench reads one
        # prompt per line)
        global PROMPTS
        PROMPTS = [p.replace("\n", " ") for p in PROMPTS]
        for cls in (InProcess, InfernoHttp, LlamaCpp):
            if cls.key not in only:
                continue
            print(f"== starting {cls.label} (load average {os.getloadavg()[0]:.2f})", flush=True)
            try:
                running.append(cls(args, workdir))
            except Exception as e:  # noqa: BLE001 - report and continue with the others
                print(f"   FAILED: {e}", flush=True)
            passes[cls.key] = []
        for npass in range(args.passes):
            # rotate who goes first each pass, so no subject always follows the same one
            order = running[npass % len(running):] + running[: npass % len(running)] if running else []
            for key in passes:
                passes[key].append([None] * len(PHASES))
            for i, phase in enumerate(PHASES):
                for subject in list(order):
                    start = time.monotonic()
                    try:
                        result = subject.phase(phase)
                    except Exception as e:  # noqa: BLE001 - drop this subject, go on with the others
                        print(f"   {subject.key} {phase} FAILED: {e}", flush=True)
                        running.remove(subject)
                        order.remove(subject)
                        subject.stop()
                        continue
                    passes[subject.key][npass][i] = result
                    print(
                        f"pass {npass + 1}/{args.passes} {phase:<12} {subject.key:<7} "
                        f"{result['tokens_per_second']:7.1f} tok/s ({time.monotonic() - start:4.1f} s, "
                        f"load average {os.getloadavg()[0]:.2f})",
                        flush=True,
                    )
        for subject in running:
            subject.stop()
        running = []
        # per subject and phase, the fastest pass (noise from other work only ever slows a run)
        for key, runs in passes.items():
            best = []
            for i in range(len(PHASES)):
                done = [r[i] for r in runs if r[i]]
                best.append(max(done, key=lambda ph: ph["tokens_per_second"]) if done else None)
            subjects[key] = best if all(best) else None
        print_report(subjects, passes, args)
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump({"args": vars(args), "prompts": PROMPTS, "system_info": SYSTEM_INFO, "best": subjects, "passes": passes}, f, indent=1)
        if args.jsonl_out:
            write_jsonl(args.jsonl_out, subjects, passes, args)
        if args.keep_logs:
            os.makedirs(args.keep_logs, exist_ok=True)
            for name in ("engine_bench.log", "inferno.log", "llamacpp.log"):
                src = os.path.join(workdir, name)
                if os.path.exists(src):
                    shutil.copy(src, args.keep_logs)
        return 0 if all(subjects.get(k) for k in only) else 1
    finally:
        for subject in running:
            subject.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
