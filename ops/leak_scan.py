#!/usr/bin/env python3
"""The secret-leak scan over a whole test run.

    ops/leak_scan.py DIR [TESTS_DIR]

DIR is the run's INFERNO_LEAK_DIR: `secrets/*.tsv` (kind TAB value, written by the test
harness for every password, JWT, API key and email the tests used), `artifacts/*` (server
logs, every data dir's events, stored jobs, results, stream chunks and cached responses)
and `nats.bin` (every NATS message of the run, from ops/nats_capture.py). Any secret found
anywhere fails the scan (exit 1), and so does anything shaped like a JWT or an API key in a
log, registered or not. With TESTS_DIR, every password and email literal in the tests'
sources (`"password": "..."`, `"email": "..."`) counts as a secret too, so a test that
sends one without the harness knowing is covered. Prints what it scanned.
"""
import collections
import glob
import os
import re
import sys

LITERAL = re.compile(rb'"(password|email)"\s*:\s*"([^"{}\\]{8,})"')
JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
API_KEY = re.compile(rb"inf_[A-Za-z0-9]{52}(?![A-Za-z0-9])")


def masked(value):
    return value[:6].decode(errors="replace") + "…"


def main():
    root = sys.argv[1]
    secrets = collections.defaultdict(set)
    for path in glob.glob(os.path.join(root, "secrets", "*.tsv")):
        with open(path, "rb") as f:
            for line in f:
                kind, _, value = line.rstrip(b"\n").partition(b"\t")
                if len(value) >= 6:
                    secrets[kind.decode()].add(value)
    if len(sys.argv) > 2:
        for path in glob.glob(os.path.join(sys.argv[2], "**", "*.rs"), recursive=True):
            with open(path, "rb") as f:
                for m in LITERAL.finditer(f.read()):
                    secrets["literal " + m.group(1).decode()].add(m.group(2))
    tokens = secrets["jwt"] | secrets["api_key"]
    texts = sorted(
        set().union(*(v for k, v in secrets.items() if k not in ("jwt", "api_key"))),
        key=len,
        reverse=True,
    )

    files = sorted(glob.glob(os.path.join(root, "artifacts", "*")))
    nats = os.path.join(root, "nats.bin")
    if os.path.exists(nats):
        files.append(nats)
    scanned = collections.Counter()
    scanned_bytes = 0
    hits = []
    for path in files:
        name = os.path.basename(path)
        kind = name.split("-")[0] if name != "nats.bin" else "nats"
        with open(path, "rb") as f:
            data = f.read()
        scanned[kind] += 1
        scanned_bytes += len(data)
        found = set()
        for m in JWT.finditer(data):
            if m.group(0) in tokens or name.endswith(".log"):
                found.add(("jwt", m.group(0)))
        for m in API_KEY.finditer(data):
            if m.group(0) in tokens or name.endswith(".log"):
                found.add(("api_key", m.group(0)))
        for t in texts:
            if t in data:
                found.add(("password, email or other secret", t))
        hits.extend((name, k, v) for k, v in sorted(found))

    lines_nats = 0
    if os.path.exists(nats):
        with open(nats, "rb") as f:
            lines_nats = f.read().count(b"MSG ")
    print(
        "leak scan: %s secrets (%s); %d files (%s), %.1f MB, %d NATS messages"
        % (
            sum(len(v) for v in secrets.values()),
            ", ".join("%s %d" % (k, len(v)) for k, v in sorted(secrets.items()) if v),
            len(files),
            ", ".join("%s %d" % kv for kv in sorted(scanned.items())),
            scanned_bytes / 1e6,
            lines_nats,
        )
    )
    if not secrets["password"] or not secrets["jwt"]:
        print("leak scan: FAILED: no secrets were registered; the harness is not recording")
        return 1
    if not files:
        print("leak scan: FAILED: nothing was recorded to scan")
        return 1
    for name, kind, value in hits[:50]:
        print("leak scan: %s found in %s: %s" % (kind, name, masked(value)))
    if hits:
        print("leak scan: FAILED: %d leaks" % len(hits))
        return 1
    print("leak scan: no secret found anywhere")
    return 0


if __name__ == "__main__":
    sys.exit(main())
