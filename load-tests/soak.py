#!/usr/bin/env python3
"""Soak benchmark: RSS, open file descriptors and p99 latency of a private `inferno serve`
before, during and after minutes of mixed load, at the highest rate this machine sustains
with zero errors.

Phases:
  1. idle baseline (30 s): RSS, fds, and p99 of a light probe (5 req/s);
  2. ramp: the control-plane request rate doubles every 30 s from --start-rate while two
     clients run inference back to back; the highest step with zero errors, p99 under
     1 s, at least 95% of its target achieved and at most 8 jobs left queued (the engine
     keeps up) is the soak rate; after the first step that fails, the rate halfway to
     it (1.5x the last sustained one) is tried once;
  3. soak (--minutes, default 10) at that rate, sampled every 10 s;
  4. after: 60 s idle, then the light probe again.
The mixed load, by share of the control-plane requests: authenticated reads (55% `GET
/api/v1/models` with an API key, 30% `GET /api/v1/auth/me` with a JWT), 0.5% logins (argon2
is meant to be slow), 12.5% API-key create then revoke, 2% queued jobs (2 tokens) read back;
beside them synchronous inference (two clients, closed loop, 8 tokens each).

Normally started by ops/soak.sh. Stdlib only. Prints a table; `--json-out F` writes the
figures as one JSON object. Exits 1 when any request of the soak failed, when the soak did
not hold its rate (95% overall, 85% in every 10 s sample), or when RSS or fds after the load
exceed the end of the soak by more than the stated slack.

usage: soak.py --inferno-bin BIN --model GGUF [--minutes 10] [--start-rate 50]
               [--max-rate 3200] [--workers 24] [--json-out F] [--jsonl-out F]
"""

import argparse
import http.client
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_inference import free_port, http_json, stop_process, wait_http_ok  # noqa: E402

MODEL_ID = "gemma-3-270m-q4_k_m"
# Slack allowed after the load: RSS may settle up to this much above the soak's last sample.
RSS_SLACK_MIB = 32
FD_SLACK = 8
# The soak fails unless it achieved this share of its rate overall, and each 10 s sample
# (SAMPLE_S) at least SAMPLE_HELD of it: a server that slows down as state accumulates fails.
HELD = 0.95
SAMPLE_S = 10
SAMPLE_HELD = 0.85
# A ramp step lasts RAMP_S; it is sustained only if the engine kept up with the queued jobs
# (at most MAX_BACKLOG still queued at its end): a backlog grows until the per-owner cap
# refuses jobs with 429, long after a short step would have passed.
RAMP_S = 30
MAX_BACKLOG = 8


def log(msg):
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


def proc_stats(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return rss / 1024.0, len(os.listdir(f"/proc/{pid}/fd"))


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round((len(xs) - 1) * p)))]


class Conn(threading.local):
    """One keep-alive connection per thread."""

    def __init__(self, port):
        self.port = port
        self.c = None

    def request(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            if self.c is None:
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                h = {"Content-Type": "application/json"}
                h.update(headers or {})
                self.c.request(method, path, None if body is None else json.dumps(body), h)
                r = self.c.getresponse()
                data = r.read()
                return r.status, data
            except (http.client.HTTPException, OSError):
                self.c.close()
                self.c = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


class Load:
    def __init__(self, port, password, key, jwt):
        self.conn = Conn(port)
        self.password, self.key, self.jwt = password, key, jwt
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.lat, self.errors, self.done, self.infer_lat = [], [], 0, []

    def record(self, t0, ok, what):
        dt = time.monotonic() - t0
        with self.lock:
            self.done += 1
            self.lat.append(dt)
            if not ok:
                self.errors.append(what)

    def take(self):
        with self.lock:
            out = (self.lat, self.errors, self.done, self.infer_lat)
        self.reset()
        return out

    def op(self, rng):
        r = rng.random()
        k = {"Authorization": f"Bearer {self.key}"}
        j = {"Authorization": f"Bearer {self.jwt}"}
        t0 = time.monotonic()
        try:
            if r < 0.55:
                s, _ = self.conn.request("GET", "/api/v1/models", headers=k)
                self.record(t0, s == 200, f"models {s}")
            elif r < 0.85:
                s, _ = self.conn.request("GET", "/api/v1/auth/me", headers=j)
                self.record(t0, s == 200, f"me {s}")
            elif r < 0.855:
                body = {"username": "admin", "password": self.password}
                s, _ = self.conn.request("POST", "/api/v1/auth/login", body)
                self.record(t0, s == 200, f"login {s}")
            elif r < 0.98:
                body = {"name": "soak", "permissions": ["read_models"], "expires_in_days": 1}
                s, data = self.conn.request("POST", "/api/v1/auth/api-keys", body, j)
                ok = s == 201
                if ok:
                    kid = json.loads(data)["id"]
                    s, _ = self.conn.request("DELETE", f"/api/v1/auth/api-keys/{kid}", None, j)
                    ok = s in (200, 204)
                self.record(t0, ok, f"key {s}")
            else:
                body = {"model": MODEL_ID, "prompt": "Soak:", "max_tokens": 2, "temperature": 0}
                s, data = self.conn.request("POST", "/api/v1/jobs", body, k)
                ok = s == 202
                if ok:
                    jid = json.loads(data)["job_id"]
                    s, _ = self.conn.request("GET", f"/api/v1/jobs/{jid}", headers=k)
                    ok = s == 200
                self.record(t0, ok, f"job {s}")
        except Exception as e:  # noqa: BLE001 - any failure is an error of the run
            self.record(t0, False, f"exception {type(e).__name__}")


def run_at(load, rate, seconds, workers, stop_flag):
    """Open loop: `rate` ops/s spread over `workers` threads for `seconds`."""
    end = time.monotonic() + seconds
    per = rate / workers

    def worker(i):
        rng = random.Random(i * 7919 + int(rate))
        nxt = time.monotonic() + rng.random() / per
        while not stop_flag.is_set():
            now = time.monotonic()
            if now >= end:
                return
            if now < nxt:
                time.sleep(min(nxt - now, end - now))
                continue
            load.op(rng)
            nxt += 1.0 / per
            if time.monotonic() - nxt > 1.0:
                nxt = time.monotonic()  # behind by more than a second: the rate is not held

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def inference_clients(port, key, stop_flag, load, n=2):
    def loop():
        conn = Conn(port)
        k = {"Authorization": f"Bearer {key}"}
        i = 0
        while not stop_flag.is_set():
            i += 1
            body = {"model": MODEL_ID, "prompt": f"Count to ten: {i}", "max_tokens": 8}
            t0 = time.monotonic()
            try:
                s, _ = conn.request("POST", "/api/v1/inference", body, k)
                ok = s == 200
            except Exception:  # noqa: BLE001
                ok, s = False, "exception"
            with load.lock:
                load.infer_lat.append(time.monotonic() - t0)
                if not ok:
                    load.errors.append(f"inference {s}")
            if not ok:
                time.sleep(0.1)  # a refusal is counted once, not retried in a tight loop

    ts = [threading.Thread(target=loop, daemon=True) for _ in range(n)]
    for t in ts:
        t.start()
    return ts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--inferno-bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--start-rate", type=float, default=50)
    ap.add_argument("--max-rate", type=float, default=3200)
    ap.add_argument("--workers", type=int, default=24)
    ap.add_argument("--json-out")
    ap.add_argument("--jsonl-out", help="append the figures as JSON lines (ops/bench-report.py)")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="inferno-soak-")
    port = free_port()
    password = "soak-admin-" + os.urandom(8).hex()
    env = dict(os.environ)
    env.update(
        {
            "INFERNO_ADMIN_PASSWORD": password,
            "INFERNO_MODELS__THREADS": "1",
            "INFERNO_MODELS__PARALLEL": "2",
            "INFERNO_LIMITS__REQUESTS_PER_MINUTE": "100000000",
            "INFERNO_LOGGING__LEVEL": "warn",
        }
    )
    cmd = [args.inferno_bin, "serve", "--bind", f"127.0.0.1:{port}", "--data-dir",
           os.path.join(work, "data"), "--models-dir",
           os.path.dirname(os.path.abspath(args.model))]
    logf = open(os.path.join(work, "server.log"), "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=logf, start_new_session=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{base}/ready", 120, proc)
        jwt = http_json("POST", f"{base}/api/v1/auth/login",
                        {"username": "admin", "password": password})["token"]
        key = http_json("POST", f"{base}/api/v1/auth/api-keys",
                        {"name": "soak", "permissions": ["run_inference", "read_models"],
                         "rate_limit_per_minute": 1000000},
                        {"Authorization": f"Bearer {jwt}"})["key"]
        load = Load(port, password, key, jwt)
        stop = threading.Event()
        out = {"minutes": args.minutes}

        def queued():
            q = http_json("GET", f"{base}/api/v1/queue", None, {"Authorization": f"Bearer {jwt}"})
            return sum(s["count"] for s in q["by_status"] if s["status"] == "queued")

        def drain(limit_s=120):
            deadline = time.monotonic() + limit_s
            while queued() > 0 and time.monotonic() < deadline:
                time.sleep(1)

        def probe(label):
            load.reset()
            run_at(load, 5, 20, 2, stop)
            lat, errors, done, _ = load.take()
            rss, fds = proc_stats(proc.pid)
            out[label] = {"rss_mib": rss, "fds": fds, "p99_ms": pct(lat, 0.99) * 1e3,
                          "requests": done, "errors": len(errors)}
            log(f"{label}: RSS {rss:.0f} MiB, {fds} fds, p99 {pct(lat, 0.99) * 1e3:.2f} ms")

        time.sleep(10)
        probe("before")

        # Ramp.
        infer_stop = threading.Event()
        inference_clients(port, key, infer_stop, load)
        rate, best, refined = args.start_rate, None, False
        while rate <= args.max_rate:
            load.reset()
            t0 = time.monotonic()
            run_at(load, rate, RAMP_S, args.workers, stop)
            lat, errors, done, _ = load.take()
            achieved = done / (time.monotonic() - t0)
            p99 = pct(lat, 0.99)
            depth = queued()
            kinds = ", ".join(f"{k} x{errors.count(k)}" for k in sorted(set(errors))[:5])
            log(f"ramp {rate:.0f}/s: achieved {achieved:.0f}/s, p99 {p99 * 1e3:.1f} ms, "
                f"{depth} jobs queued, {len(errors)} errors" + (f" ({kinds})" if kinds else ""))
            if errors or p99 > 1.0 or achieved < HELD * rate or depth > MAX_BACKLOG:
                # Once, halfway between the last sustained step and this one (after the
                # backlog has drained).
                if best is None or refined:
                    break
                refined, rate = True, best * 1.5
                drain()
                continue
            best = rate
            if refined:
                break
            rate *= 2
        if best is None:
            raise RuntimeError(f"no rate from {args.start_rate}/s up was sustained without errors")
        out["rate"] = best
        drain()  # what a failed step left queued is not the soak's

        # Soak.
        samples, all_lat, all_errors, total = [], [], [], 0
        end = time.monotonic() + args.minutes * 60
        t_start = time.monotonic()
        while time.monotonic() < end:
            secs = min(SAMPLE_S, end - time.monotonic())
            run_at(load, best, secs, args.workers, stop)
            lat, errors, done, infer = load.take()
            rss, fds = proc_stats(proc.pid)
            samples.append({"t_s": round(time.monotonic() - t_start), "rss_mib": rss, "fds": fds,
                            "p99_ms": pct(lat, 0.99) * 1e3, "ops": done, "secs": secs,
                            "queued": queued(),
                            "inferences": len(infer)})
            all_lat += lat
            all_errors += errors
            total += done
            out.setdefault("inferences", 0)
            out["inferences"] += len(infer)
        infer_stop.set()
        wall = time.monotonic() - t_start
        out["during"] = {
            "rss_mib_first": samples[0]["rss_mib"], "rss_mib_max": max(s["rss_mib"] for s in samples),
            "rss_mib_last": samples[-1]["rss_mib"], "fds_max": max(s["fds"] for s in samples),
            "fds_last": samples[-1]["fds"], "p99_ms": pct(all_lat, 0.99) * 1e3,
            "p50_ms": pct(all_lat, 0.5) * 1e3, "requests": total, "achieved_rate": total / wall,
            "errors": len(all_errors), "error_kinds": sorted(set(all_errors))[:10],
            "queued_max": max(s["queued"] for s in samples),
        }
        out["samples"] = samples
        log(f"soak: {total} requests at {total / wall:.0f}/s, {len(all_errors)} errors")

        time.sleep(60)
        probe("after")
    finally:
        stop_process(proc, "inferno")
        shutil.rmtree(work, ignore_errors=True)

    d, b, a = out["during"], out["before"], out["after"]
    print(f"Soak: {args.minutes:g} min of mixed load at {out['rate']:.0f} requests/s "
          f"(highest zero-error step of the ramp) plus {out['inferences']} inferences")
    print()
    print("| phase | RSS MiB | open fds | p99 ms | requests | errors |")
    print("|---|---|---|---|---|---|")
    print(f"| before | {b['rss_mib']:.0f} | {b['fds']} | {b['p99_ms']:.2f} | {b['requests']} | {b['errors']} |")
    print(f"| during (first / max / last sample) | {d['rss_mib_first']:.0f} / {d['rss_mib_max']:.0f} / "
          f"{d['rss_mib_last']:.0f} | max {d['fds_max']}, last {d['fds_last']} | {d['p99_ms']:.2f} | "
          f"{d['requests']} | {d['errors']} |")
    print(f"\nRequests/s achieved during the soak: {d['achieved_rate']:.1f}; "
          f"most jobs queued at a sample: {d['queued_max']}")
    print(f"| after (60 s idle) | {a['rss_mib']:.0f} | {a['fds']} | {a['p99_ms']:.2f} | {a['requests']} | {a['errors']} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=1)
    if args.jsonl_out:
        rows = [
            ("before", "RSS MiB", b["rss_mib"]), ("before", "open fds", b["fds"]),
            ("before", "p99 ms", b["p99_ms"]), ("before", "errors", b["errors"]),
            ("during (max)", "RSS MiB", d["rss_mib_max"]), ("during (max)", "open fds", d["fds_max"]),
            ("during", "p99 ms", d["p99_ms"]), ("during", "requests/s", d["achieved_rate"]),
            ("during", "requests", d["requests"]), ("during", "errors", d["errors"]),
            ("during", "inferences", out["inferences"]),
            ("during (max)", "jobs queued", d["queued_max"]),
            ("during (last sample)", "RSS MiB", d["rss_mib_last"]),
            ("during (last sample)", "open fds", d["fds_last"]),
            ("after 60 s idle", "RSS MiB", a["rss_mib"]), ("after 60 s idle", "open fds", a["fds"]),
            ("after 60 s idle", "p99 ms", a["p99_ms"]), ("after 60 s idle", "errors", a["errors"]),
        ]
        with open(args.jsonl_out, "a") as f:
            for case, metric, value in rows:
                f.write(json.dumps({"bench": "soak", "case": case, "metric": metric,
                                    "subject": "inferno", "value": value}) + "\n")
    failed = []
    if d["errors"] or a["errors"]:
        failed.append(f"{d['errors'] + a['errors']} errors: {d['error_kinds']}")
    if a["rss_mib"] > d["rss_mib_last"] + RSS_SLACK_MIB:
        failed.append(f"RSS grew after the load: {d['rss_mib_last']:.0f} -> {a['rss_mib']:.0f} MiB")
    if d["achieved_rate"] < HELD * out["rate"]:
        failed.append(f"the rate was not held: {d['achieved_rate']:.0f}/s of {out['rate']:.0f}/s")
    # One sample may fall short of the rate by more (a 10 s window catches a pause whole).
    slow = [s for s in samples if s["ops"] < SAMPLE_HELD * out["rate"] * s["secs"]]
    if slow:
        failed.append(f"{len(slow)} of {len(samples)} samples fell below the rate "
                      f"(first at {slow[0]['t_s']} s: {slow[0]['ops']} requests)")
    if a["fds"] > b["fds"] + FD_SLACK:
        failed.append(f"fds not released: {b['fds']} before, {a['fds']} after")
    for f in failed:
        print(f"soak: FAILED: {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
