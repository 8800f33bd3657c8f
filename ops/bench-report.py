#!/usr/bin/env python3
"""Renders BENCHMARKS.md from a results dir of ops/bench-all.sh.

A results dir holds JSON lines files (`*.jsonl`) of two kinds of records:

  figure: {"bench": "inference", "case": "8 concurrent", "metric": "tokens/s",
           "subject": "inferno-http", "value": 214.9, ...}
  info:   {"info": "CPU", "value": "AMD EPYC 9B45"}        (the machine section)

One table per bench: a row per (case, metric) in the order first seen, a column per subject
(a bench with one subject: a row per case, a column per metric). A figure recorded more than once (rounds, repeated runs) shows the median, with the count.
Where llama.cpp's server did the same work (`subject` "llama.cpp"), every other subject gets a
column "<subject> / llama.cpp" with the ratio of the two cells.

usage: bench-report.py RESULTS_DIR [--out BENCHMARKS.md]
       bench-report.py --collect-machine     (info lines about this machine, on stdout)
"""

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys

# Known benches: title, the command behind it, and how to read it. Others follow, by name.
BENCHES = [
    ("inference", "Inference", "ops/bench-inference.sh",
     "Gemma 3 270M Q4_K_M, greedy: Inferno's engine in-process, Inferno over HTTP and llama.cpp's "
     "own server (xllamacpp) with the same threads, slots and prompts, taking turns phase by "
     "phase. tokens/s is the best pass; the paired-ratio row is the median over passes."),
    ("stream", "Streaming", "ops/bench-inference.sh --stream",
     "SSE against the JSON path and llama.cpp's server streaming; TTFT measured by the client. "
     "Then many SSE consumers of one job, checked for loss."),
    ("prefix", "Prompt-prefix cache", "ops/bench-inference.sh --prefix",
     "Time to first token of a ~1,000-token shared system prompt plus a short question: cold (the "
     "first request with that system prompt) and warm (three later questions), medians over rounds, "
     "beside llama.cpp's server with cache_prompt: true and a full-size sliding-window cache. "
     "Targets: warm <= 0.2x cold, Inferno warm <= llama.cpp warm x 1.1."),
    ("sse", "SSE consumers", "load-tests/sse_load.py",
     "Many concurrent readers of GET /api/v1/jobs/{id}/stream; first-token latency from each "
     "reader's connect."),
    ("mixed", "Mixed load", "load-tests/mixed_load.sh",
     "Authenticated reads (wrk, API key) alone, then beside back-to-back inference clients."),
    ("auth", "Authentication overhead", "load-tests/auth_load.sh",
     "wrk against /health (no auth) and /api/v1/auth/me with an API key and a JWT."),
    ("queue", "Job queue", "load-tests/queue_load.sh",
     "Durable enqueue through POST /api/v1/jobs (queue paused, 64 connections)."),
    ("events", "Event log", "cargo run --example events_bench",
     "Durable appends, the Merkle tree's cost, proofs, verification, start-up and replay."),
    ("cluster", "Cluster mode", "cargo run --example cluster_bench",
     "Durable single-event appends by 64 appenders through the shared log in PostgreSQL with 1, 2 "
     "and 3 nodes in one process, beside the embedded store (two rounds each, alternating), and the "
     "delay until an append on one node reaches another's live tail. All on one 2-core machine with "
     "PostgreSQL: the control plane, not inference scale-out."),
    ("soak", "Soak", "ops/soak.sh",
     "Mixed control-plane load (API-key and JWT reads, logins, key create and revoke, queued jobs) "
     "at the highest rate of a doubling ramp with zero errors, beside two inference clients, for "
     "10 minutes; RSS and open fds of the server and p99 before, during and after."),
]
REFERENCE = "llama.cpp"
SUBJECT_ORDER = ["inferno-inproc", "inferno-http", "inferno-sse", "inferno-json", "inferno", REFERENCE]


def read_results(results_dir):
    figures, info = [], []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.jsonl"))):
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    sys.exit(f"{path}:{n}: not JSON")
                if "info" in rec:
                    info.append(rec)
                elif {"bench", "case", "metric", "subject", "value"} <= rec.keys():
                    figures.append(rec)
                else:
                    sys.exit(f"{path}:{n}: neither a figure nor an info record")
    return figures, info


def fmt(value):
    if isinstance(value, str):
        return value
    if isinstance(value, int):  # counts
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.01 else f"{value:.3g}"


def table(records):
    """Markdown lines of one bench's table."""
    subjects = sorted({r["subject"] for r in records},
                      key=lambda s: (SUBJECT_ORDER.index(s) if s in SUBJECT_ORDER else len(SUBJECT_ORDER), s))
    rows, cells = [], {}
    for r in records:
        row = (r["case"], r["metric"])
        if row not in cells:
            rows.append(row)
            cells[row] = {}
        cells[row].setdefault(r["subject"], []).append(r["value"])
    if len(subjects) == 1:
        return pivot(rows, cells, subjects[0])
    ratios = [s for s in subjects if s != REFERENCE] if REFERENCE in subjects else []
    head = ["case", "measure"] + subjects + [f"{s} / {REFERENCE}" for s in ratios]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        values = {s: statistics.median(v) for s, v in cells[row].items()}
        line = list(row)
        for s in subjects:
            v = cells[row].get(s)
            line.append("" if v is None else cell(v))
        for s in ratios:
            a, b = values.get(s), values.get(REFERENCE)
            line.append(f"{a / b:.2f}" if a is not None and b else "")
        out.append("| " + " | ".join(line) + " |")
    return out


def cell(values):
    return fmt(statistics.median(values)) + (f" (median of {len(values)})" if len(values) > 1 else "")


def pivot(rows, cells, subject):
    """One subject: a row per case, a column per measure."""
    cases, metrics = [], []
    for case, metric in rows:
        if case not in cases:
            cases.append(case)
        if metric not in metrics:
            metrics.append(metric)
    out = ["| " + " | ".join(["case"] + metrics) + " |", "|" + "---|" * (len(metrics) + 1)]
    for case in cases:
        line = [case] + [cell(cells[(case, m)][subject]) if (case, m) in cells else "" for m in metrics]
        out.append("| " + " | ".join(line) + " |")
    return out


def render(results_dir):
    figures, info = read_results(results_dir)
    lines = ["# Benchmarks", "",
             f"Generated by `ops/bench-report.py` from the results of `ops/bench-all.sh` "
             f"(`{os.path.basename(os.path.abspath(results_dir))}`). Every figure below was measured "
             "in that one run, on the machine described here; tests never assert timings. Earlier "
             "measurements, with the changes they were taken for, are in "
             "[load-tests/HISTORY.md](load-tests/HISTORY.md).", "",
             "## Machine and build", "", "| | |", "|---|---|"]
    status = []
    for rec in info:
        if rec["info"].startswith("bench "):
            status.append(rec)
            continue
        lines.append(f"| {rec['info']} | {str(rec['value']).replace('|', '/')} |")
    if status:
        lines += ["", "| benchmark | result |", "|---|---|"]
        lines += [f"| {rec['info'][len('bench '):]} | {rec['value']} |" for rec in status]
    lines.append("")
    lines.append("Ratios: for rates (tokens/s, req/s) above 1 means the first is faster; for times "
                 "(ms, s) below 1 does.")
    by_bench = {}
    for r in figures:
        by_bench.setdefault(r["bench"], []).append(r)
    known = [b[0] for b in BENCHES]
    for name, title, command, about in BENCHES + [(b, b, "", "") for b in by_bench if b not in known]:
        records = by_bench.get(name)
        if not records:
            continue
        lines += ["", f"## {title}", ""]
        if command:
            lines += [f"`{command}`: {about}", ""]
        lines += table(records)
    return "\n".join(lines) + "\n"


def run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def collect_machine():
    """Info records about this machine and build, for the report's first section."""
    cpu, flags, ids = "unknown", set(), {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and cpu == "unknown":
                    cpu = value.strip()
                elif key in ("cpu family", "model") and key not in ids:
                    ids[key] = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    if ids:
        cpu += f" (family {ids.get('cpu family', '?')}, model {ids.get('model', '?')})"
    simd = [f for f in ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "amx_tile") if f in flags]
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
            mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    rustflags = os.environ.get("RUSTFLAGS") or "(unset: .cargo/config.toml, -C target-cpu=x86-64-v3)"
    records = [
        ("date (UTC)", run(["date", "-u", "+%Y-%m-%d %H:%M"])),
        ("CPU", cpu),
        ("CPU features (SIMD)", ", ".join(simd) or "-"),
        ("cores", str(os.cpu_count())),
        ("memory", mem),
        ("kernel", platform.release()),
        ("rustc", run(["rustc", "--version"])),
        ("RUSTFLAGS", rustflags),
        ("profile", "dev (our crate opt-level 1, dependencies opt-level 3, llama.cpp Release)"),
        ("commit", run(["git", "rev-parse", "--short", "HEAD"]) or "-"),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]
    if os.environ.get("BENCH_QUICK") == "1":
        records.append(("mode", "BENCH_QUICK=1 (short runs: plumbing, not figures to quote)"))
    for key, value in records:
        print(json.dumps({"info": key, "value": value}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results_dir", nargs="?")
    ap.add_argument("--out", help="write here instead of stdout")
    ap.add_argument("--collect-machine", action="store_true")
    args = ap.parse_args()
    if args.collect_machine:
        return collect_machine()
    if not args.results_dir:
        ap.error("RESULTS_DIR is required")
    text = render(args.results_dir)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
