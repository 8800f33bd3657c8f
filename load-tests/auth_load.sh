#!/usr/bin/env bash
# Auth overhead under load: starts its own `inferno serve` (temp data dir, loopback, rate limit
# out of the way) and runs wrk against, one after another:
#   1. GET /health                 unauthenticated (the baseline)
#   2. GET /api/v1/auth/me         X-API-Key: <key>
#   3. GET /api/v1/auth/me         Authorization: Bearer <jwt>
# then prints requests/s and p99 latency for each, with ratios to /health.
#
# usage: load-tests/auth_load.sh            env: WRK_THREADS (2) WRK_CONNECTIONS (32) WRK_DURATION (10s)
#                                                 WRK_ROUNDS (1) BENCH_JSONL (unset)
# With WRK_ROUNDS=N the three runs are repeated N times in turn (health, key, JWT, health, ...)
# and the table shows medians: each round's ratios are taken within the round, so load from
# other processes that comes and goes between rounds does not skew them.
# Needs wrk (apt-get install -y wrk), curl and python3. Builds the dev-profile binary if needed;
# set INFERNO_BIN to use another binary. The access log stays at the configured level (info:
# one line per request, to a file), as in production; INFERNO_LOGGING__LEVEL=warn drops it.
# Stops the server and removes the data dir on exit. With BENCH_JSONL=FILE the table's figures
# are also appended to FILE as JSON lines (ops/bench-all.sh, ops/bench-report.py).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${WRK_THREADS:-2}"
CONNS="${WRK_CONNECTIONS:-32}"
DURATION="${WRK_DURATION:-10s}"
ROUNDS="${WRK_ROUNDS:-1}"
source load-tests/lib.sh
load_setup auth-load
# no models needed: an empty models dir keeps startup quick
load_serve INFERNO_LIMITS__REQUESTS_PER_MINUTE=100000000 INFERNO_AUTH__LOGIN_ATTEMPTS_PER_MINUTE=1000
token="$(load_login)"
# no per-key rate_limit_per_minute: the key then falls under the (raised) global limit
key="$(load_key "$token" auth-load '["read_models"]')"
# sanity: both credentials work before loading them
curl -fsS "$base/api/v1/auth/me" -H "X-API-Key: $key" >/dev/null
curl -fsS "$base/api/v1/auth/me" -H "Authorization: Bearer $token" >/dev/null

run() { # name, then extra wrk args; wrk's full output goes to $work/NAME.txt and the terminal
    local name="$1"; shift
    echo "== $name: wrk -t$THREADS -c$CONNS -d$DURATION --latency $*" | sed -E 's/(X-API-Key: |Bearer )[^ ]+/\1<redacted>/'
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$@" | tee "$work/$name.txt" | sed -n '/Latency Distribution/,/Requests\/sec/p;/Non-2xx/p;/Socket errors/p'
}
for round in $(seq 1 "$ROUNDS"); do
    [[ "$ROUNDS" -gt 1 ]] && echo "-- round $round of $ROUNDS"
    run "health.$round" "$base/health"
    run "apikey.$round" -H "X-API-Key: $key" "$base/api/v1/auth/me"
    run "jwt.$round" -H "Authorization: Bearer $token" "$base/api/v1/auth/me"
done

python3 - "$work" "$ROUNDS" "${BENCH_JSONL:-}" <<'PY'
import json, re, statistics, sys
work, rounds, jsonl = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def to_ms(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    n, u = float(m.group(1)), m.group(2)
    return n * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[u]
def parse(name):
    text = open(f"{work}/{name}.txt").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50 = to_ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errs = re.search(r"Socket errors: (.*)", text)
    return rps, p50, p99, int(bad.group(1)) if bad else 0, errs.group(1) if errs else ""
runs = {n: [parse(f"{n}.{r}") for r in range(1, rounds + 1)] for n in ("health", "apikey", "jwt")}
med = statistics.median
rows = []
for name, label in (("health", "GET /health (no auth)"), ("apikey", "GET /auth/me X-API-Key"), ("jwt", "GET /auth/me Bearer JWT")):
    rs = runs[name]
    # ratios within each round, then their median
    ratio = med(r[0] / h[0] for r, h in zip(rs, runs["health"]))
    p99_ratio = med(r[2] / h[2] for r, h in zip(rs, runs["health"]))
    rows.append((label, med(r[0] for r in rs), med(r[1] for r in rs), med(r[2] for r in rs),
                 ratio, p99_ratio, sum(r[3] for r in rs), "; ".join(r[4] for r in rs if r[4])))
print()
if rounds > 1:
    print(f"medians of {rounds} rounds (ratios taken within each round)")
    for name in ("apikey", "jwt"):
        print(f"  {name} req/s ratio per round: " + " ".join(f"{r[0] / h[0]:.2f}" for r, h in zip(runs[name], runs["health"])))
print(f"{'endpoint':<26} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'req/s vs /health':>17} {'p99 vs /health':>15} {'non-2xx':>8}")
print("-" * 98)
for label, rps, p50, p99, ratio, p99_ratio, bad, errs in rows:
    print(f"{label:<26} {rps:>10.0f} {p50:>8.2f} {p99:>8.2f} {ratio:>17.2f} {p99_ratio:>15.2f} {bad:>8}" + (f"  socket errors: {errs}" if errs else ""))
print("-" * 98)
print("req/s ratio < 1 and p99 ratio > 1 = the cost of authentication (and rate limiting) per request")
if any(r[6] for r in rows):
    print("WARNING: some responses were not 2xx (see above); those figures do not measure success paths")
if jsonl:
    with open(jsonl, "a") as f:
        for label, rps, p50, p99, ratio, p99_ratio, bad, _ in rows:
            for metric, value in (("req/s", rps), ("p50 ms", p50), ("p99 ms", p99),
                                  ("req/s vs /health", ratio), ("non-2xx", bad)):
                f.write(json.dumps({"bench": "auth", "case": label, "metric": metric,
                                    "subject": "inferno", "value": value, "rounds": rounds}) + "\n")
PY
