#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/ (committed; the
fuzzer adds what it finds in its own runs' corpus dirs, see ops/fuzz.sh). Deterministic:
running it again rewrites the same files."""
import base64
import hashlib
import hmac
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def stored(seq, typ, payload, version=1, actor=("user", "u1"), request_id="req-1", ip="127.0.0.1"):
    """An envelope in the stored layout (declaration order, `hash` last)."""
    body = (
        '{"seq":%d,"id":"0190f1a2-7b3c-7def-8123-456789abcdef","ts":"2026-12-01T10:00:00.000001Z",'
        '"type":%s,"version":%d,"actor":{"kind":"%s","id":%s},"request_id":%s,"client_ip":%s,'
        '"payload":%s,"prev_hash":"%s","hash":"%s"}'
    ) % (
        seq, json.dumps(typ), version, actor[0], json.dumps(actor[1]),
        json.dumps(request_id), json.dumps(ip),
        json.dumps(payload, sort_keys=True, separators=(",", ":")),
        "0" * 64, hashlib.sha256(str(seq).encode()).hexdigest(),
    )
    return body


put("event_decode", "login_failed", stored(1, "auth.login_failed", {"username": "alice", "reason": "wrong password"}))
put("event_decode", "user_created", stored(2, "user.created", {"user_id": "u2", "username": "bob", "role": "user", "extra_permissions": []}, actor=("system", "system"), request_id=None, ip=None))
put("event_decode", "job_queued", stored(3, "job.queued", {"job_id": "j1", "model": "m", "priority": "normal", "params": {"max_tokens": 8, "temperature": 0.7}, "prompt": {"sha256": "ab" * 32, "length": 5, "text": None}}))
put("event_decode", "escapes", stored(4, "auth.login_failed", {"username": "a\"b\\c\n\u00e9\u2028", "reason": "x"}))
put("event_decode", "reordered", json.dumps({"hash": "0" * 64, "seq": 5, "type": "x", "version": 1, "payload": {}}))

for i, v in enumerate([
    {}, [], None, True, 0, -1, 18446744073709551615, -9223372036854775808, 1.5, -0.0, 1e300,
    "", "\u0000\u001f\"\\/\u00e9\ud83d\ude00", {"b": 1, "a": [1, {"d": None, "c": "x"}]},
    [[[[[[[[[[1]]]]]]]]]], {"\u00e9": 1, "e": 2, "E": 3, "": 4},
]):
    put("canonical_encode", "v%02d" % i, json.dumps(v))


def gguf_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf():
    kvs = [
        (gguf_str("general.architecture") + struct.pack("<I", 8) + gguf_str("gemma3")),
        (gguf_str("general.name") + struct.pack("<I", 8) + gguf_str("tiny")),
        (gguf_str("gemma3.context_length") + struct.pack("<II", 4, 32768)),
        (gguf_str("general.file_type") + struct.pack("<II", 4, 15)),
        (gguf_str("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + gguf_str("a") + gguf_str("b") + gguf_str("c")),
        (gguf_str("tokenizer.chat_template") + struct.pack("<I", 8) + gguf_str("{{ messages }}")),
    ]
    tensor = gguf_str("tok_embd.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 4, 8) + struct.pack("<IQ", 0, 0)
    return b"GGUF" + struct.pack("<IQQ", 3, 1, len(kvs)) + b"".join(kvs) + tensor


put("gguf_header", "minimal_v3", gguf())
put("gguf_header", "v2_header_only", b"GGUF" + struct.pack("<IQQ", 2, 0, 0))
put("gguf_header", "bad_magic", b"GGML" + b"\0" * 20)

alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
put("api_key", "valid", "inf_" + "".join(alnum[(i * 7) % 62] for i in range(52)))
put("api_key", "short", "inf_abc")
put("api_key", "symbols", "inf_" + "!" * 52)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(header, claims, key):
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    sig = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(sig)


claims = {"sub": "u1", "jti": "j1", "iat": 1764583200, "exp": 4102444800}
put("jwt", "other_key", jwt({"alg": "HS256", "typ": "JWT"}, claims, b"not-the-fuzzing-secret"))
put("jwt", "alg_none", b64(b'{"alg":"none"}') + "." + b64(json.dumps(claims).encode()) + ".")
put("jwt", "rs256", jwt({"alg": "RS256"}, claims, b"k"))

for i, body in enumerate([
    {"model": "m", "prompt": "Hi", "max_tokens": 8},
    {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 7, "stop": ["\n"]},
    {"prompt": "x", "max_tokens": 0, "temperature": -1},
    {"model": "m", "prompt": "x", "priority": "critical", "stream": True, "detach": True, "cache": False},
]):
    put("inference_request", "b%02d" % i, json.dumps(body))
for i, body in enumerate([
    {"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
    {"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_completion_tokens": 4, "n": 1, "stop": "x"},
    {"model": "m", "messages": [], "tools": [{"type": "function"}], "n": 2},
]):
    put("chat_request", "b%02d" % i, json.dumps(body))
