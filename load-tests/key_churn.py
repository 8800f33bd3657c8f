#!/usr/bin/env python3
"""Key churn: whether creating an API key slows down as a user's revoked keys pile up.

Starts a private `inferno serve`, then runs ROUNDS rounds of 500 (create key, revoke it,
GET /api/v1/auth/me) with one client and prints each round's p50/p99 per request. A flat
line is the expected result; a rising one means some path walks the user's key history.

usage: load-tests/key_churn.py INFERNO_BIN MODELS_DIR [ROUNDS]   (ROUNDS defaults to 12)
"""
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_inference import free_port, http_json, stop_process, wait_http_ok  # noqa: E402


def main():
    binary, models = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 12
    work = tempfile.mkdtemp(prefix="inferno-key-churn-")
    port, password = free_port(), "churn-admin-" + os.urandom(8).hex()
    env = dict(os.environ, INFERNO_ADMIN_PASSWORD=password, INFERNO_MODELS__THREADS="1",
               INFERNO_LIMITS__REQUESTS_PER_MINUTE="100000000", INFERNO_LOGGING__LEVEL="warn")
    proc = subprocess.Popen([binary, "serve", "--bind", f"127.0.0.1:{port}", "--data-dir",
                             os.path.join(work, "data"), "--models-dir", models], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(base + "/ready", 120, proc)
        jwt = http_json("POST", base + "/api/v1/auth/login",
                        {"username": "admin", "password": password})["token"]
        conn = http.client.HTTPConnection("127.0.0.1", port)
        h = {"Authorization": f"Bearer {jwt}", "Content-Type": "application/json"}
        body = json.dumps({"name": "churn", "permissions": ["read_models"], "expires_in_days": 1})

        def timed(method, path, data=None, status=200):
            t0 = time.monotonic()
            conn.request(method, path, data, h)
            r = conn.getresponse()
            out = r.read()
            if r.status != status:
                raise RuntimeError(f"{method} {path}: HTTP {r.status}: {out[:200]!r}")
            return time.monotonic() - t0, out

        def pct(xs, q):
            return sorted(xs)[int(q * (len(xs) - 1))] * 1e3

        for n in range(rounds):
            create, revoke, me = [], [], []
            for _ in range(500):
                dt, out = timed("POST", "/api/v1/auth/api-keys", body, 201)
                create.append(dt)
                key_id = json.loads(out)["id"]
                revoke.append(timed("DELETE", f"/api/v1/auth/api-keys/{key_id}", None, 204)[0])
                me.append(timed("GET", "/api/v1/auth/me")[0])
            print(f"after {(n + 1) * 500} keys: create p50 {pct(create, .5):.2f} p99 "
                  f"{pct(create, .99):.2f}  revoke p50 {pct(revoke, .5):.2f}  "
                  f"me p50 {pct(me, .5):.2f} ms", flush=True)
    finally:
        stop_process(proc, "inferno")
    return 0


if __name__ == "__main__":
    sys.exit(main())
