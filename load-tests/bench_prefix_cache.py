#!/usr/bin/env python3
"""Prompt-prefix cache benchmark: time to first token for a ~1,000-token shared system
prompt plus a short question, cold (the first request with that system prompt) and warm
(later requests that share it), for Inferno (`[cache] prompt_prefix`, on by default) and
llama.cpp's own server (xllamacpp, `cache_prompt: true`, with a full-size sliding-window
cache so that Gemma 3 can reuse a prefix at all: both sides then keep every KV cell).

Both servers stay loaded and take turns round by round; each round uses a new system prompt
(a round-unique first line), so its first request is cold on both. TTFT is each server's own
figure: Inferno's `timings.queue_ms + timings.prompt_ms`, llama.cpp's `timings.prompt_ms`.
Targets (issue): warm <= 0.2x cold, and Inferno warm <= llama.cpp warm x 1.1.

Run through ops/bench-inference.sh --prefix (which builds, fetches and installs what it needs).
"""

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_inference as bi  # noqa: E402

QUESTIONS = [
    "Which rule mentions the colour blue?",
    "How many rules are there?",
    "What does rule 7 say?",
    "Summarise the rules in one sentence.",
]


def system_prompt(round_id, lines):
    rules = "".join(
        f"Rule {i}: a visitor who arrives at gate {i % 9} before {i % 12 + 1} o'clock must sign book {i % 5} "
        f"and wear a {['red', 'green', 'blue', 'white'][i % 4]} badge.\n"
        for i in range(1, lines + 1)
    )
    return f"Session {round_id}. You are the gatekeeper's assistant. The rules:\n{rules}\n"


def inferno_once(client, prompt, max_tokens):
    r = bi.http_json(
        "POST",
        f"{client.base}/api/v1/inference",
        {"model": bi.MODEL_ID, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
        {"X-API-Key": client.key},
        timeout=client.timeout,
    )
    t = r["timings"]
    return {
        "ttft_ms": t["queue_ms"] + t["prompt_ms"],
        "prompt_tokens": r["usage"]["prompt_tokens"],
        "cached_tokens": t.get("cached_tokens", 0),
        "text": r["text"],
    }


def llama_once(client, prompt, max_tokens):
    r = bi.http_json(
        "POST",
        f"{client.base}/completion",
        {"prompt": prompt, "n_predict": max_tokens, "temperature": 0, "cache_prompt": True, "stream": False},
        timeout=client.timeout,
    )
    t = r["timings"]
    return {
        "ttft_ms": t["prompt_ms"],
        "prompt_tokens": t.get("prompt_n", 0) + t.get("cache_n", 0),
        "cached_tokens": t.get("cache_n", 0),
        "text": r["content"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inferno-bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--ctx-per-slot", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--rules", type=int, default=40, help="lines of the system prompt (40: about 1,000 tokens)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--json-out")
    ap.add_argument("--jsonl-out", help="append the figures as JSON lines for ops/bench-report.py")
    args, _ = ap.parse_known_args()
    args.model = os.path.abspath(args.model)
    args.parallel = max(args.parallel, 2)
    args.ctx_per_slot = max(args.ctx_per_slot, 2048)
    args.swa_full = True
    signal.signal(signal.SIGTERM, bi.on_sigterm)
    workdir = tempfile.mkdtemp(prefix="inferno-prefix-bench-")
    subjects = []
    try:
        subjects.append(("inferno", bi.InfernoHttp(args, workdir), inferno_once))
        subjects.append(("llama.cpp", bi.LlamaCpp(args, workdir), llama_once))
        figures = {name: {"cold": [], "warm": [], "cached": [], "prompt_tokens": []} for name, _, _ in subjects}
        for r in range(args.rounds):
            for name, server, once in subjects:
                system = system_prompt(f"{r}-{name}", args.rules)
                cold = once(server.client, system + "Question: " + QUESTIONS[0] + "\nAnswer:", args.max_tokens)
                f = figures[name]
                f["cold"].append(cold["ttft_ms"])
                f["prompt_tokens"].append(cold["prompt_tokens"])
                for q in QUESTIONS[1:]:
                    warm = once(server.client, system + "Question: " + q + "\nAnswer:", args.max_tokens)
                    f["warm"].append(warm["ttft_ms"])
                    f["cached"].append(warm["cached_tokens"])
                print(
                    f"round {r + 1}/{args.rounds} {name:<9} cold {cold['ttft_ms']:7.1f} ms, "
                    f"warm {statistics.median(f['warm'][-3:]):6.1f} ms (cached {f['cached'][-1]} of "
                    f"{cold['prompt_tokens']} tokens)",
                    flush=True,
                )
        for _, server, _ in subjects:
            server.stop()
        subjects = []
        report = {}
        for name, f in figures.items():
            cold, warm = statistics.median(f["cold"]), statistics.median(f["warm"])
            report[name] = {
                "prompt_tokens": statistics.median(f["prompt_tokens"]),
                "cached_tokens": statistics.median(f["cached"]),
                "cold_ttft_ms": cold,
                "warm_ttft_ms": warm,
                "warm_over_cold": warm / cold if cold else None,
            }
        inf, lc = report["inferno"], report["llama.cpp"]
        print()
        print(f"Prompt-prefix cache, TTFT medians over {args.rounds} rounds ({args.threads} threads, "
              f"{args.parallel} slots; system info {bi.SYSTEM_INFO})")
        print("| server | prompt tokens | cached on warm | cold TTFT ms | warm TTFT ms | warm / cold |")
        print("|---|---|---|---|---|---|")
        for name in ("inferno", "llama.cpp"):
            x = report[name]
            print(f"| {name} | {x['prompt_tokens']:.0f} | {x['cached_tokens']:.0f} | {x['cold_ttft_ms']:.1f} | "
                  f"{x['warm_ttft_ms']:.1f} | {x['warm_over_cold']:.3f} |")
        print(f"Inferno warm / llama.cpp warm: {inf['warm_ttft_ms'] / lc['warm_ttft_ms']:.2f} "
              f"(target <= 1.1); Inferno cold / llama.cpp cold: {inf['cold_ttft_ms'] / lc['cold_ttft_ms']:.2f}")
        if args.jsonl_out:
            with open(args.jsonl_out, "a") as out:
                for name in ("inferno", "llama.cpp"):
                    x = report[name]
                    for case, metric, value in (
                        ("prompt tokens", "tokens", x["prompt_tokens"]),
                        ("cached on warm", "tokens", x["cached_tokens"]),
                        ("cold TTFT", "ms", x["cold_ttft_ms"]),
                        ("warm TTFT", "ms", x["warm_ttft_ms"]),
                        ("warm / cold", "ratio", x["warm_over_cold"]),
                    ):
                        out.write(json.dumps({"bench": "prefix", "case": case, "metric": metric,
                                              "subject": name, "value": value}) + "\n")
        if args.json_out:
            with open(args.json_out, "w") as out:
                json.dump({"benchmark": "prefix_cache", "args": vars(args), "system_info": bi.SYSTEM_INFO,
                           "report": report, "raw": figures}, out, indent=1)
        return 0
    finally:
        for _, server, _ in subjects:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
