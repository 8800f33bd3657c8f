"""Schemathesis hooks for Inferno's spec fuzzing (run by tests/spec_fuzz.rs).

- The check `error_body`: every 4xx/5xx answer carries the error body of its route:
  Inferno's {"error": {"code", "message", "details"}} with the code of its status, or on
  /v1 OpenAI's {"error": {"message", "type", "param", "code"}}.
- `before_call` keeps the run cheap and its credential alive: inference asks for at most
  MAX_TOKENS tokens, and no request deletes or rotates the API key the run authenticates
  with, changes or deletes its owner (the admin), or deletes or changes the test model.
  Those cases go to an id that does not exist instead, so the operations are still fuzzed.
- Positive inference cases are made acceptable where the server's rules go beyond what
  the spec can say (the test model, one of prompt or messages and not empty, a known
  priority and role, sampling values in range, OpenAI's unsupported fields left out, no
  unknown fields where the request refuses them), so that the answers' 200 and SSE
  schemas are checked too, not only the 400s. Negative cases are sent as generated.
- `after_call` resumes the queue after a pause, so that inference keeps running.

The ids come from the environment that tests/spec_fuzz.rs sets; the key's secret is only
in the configuration's auth section (never printed: Schemathesis masks it in output).
"""

import os

import requests
import schemathesis
from schemathesis import GenerationMode

MAX_TOKENS = 4
KEY_ID = os.environ["INFERNO_FUZZ_KEY_ID"]
ADMIN_ID = os.environ["INFERNO_FUZZ_ADMIN_ID"]
MODEL_ID = os.environ["INFERNO_FUZZ_MODEL_ID"]
BASE_URL = os.environ["INFERNO_FUZZ_URL"]
ABSENT_ID = "00000000-0000-0000-0000-000000000000"

INFERENCE = {
    ("POST", "/api/v1/inference"),
    ("POST", "/api/v1/jobs"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
}
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")

# (method, path template) -> the path parameter and the id it must never be.
PROTECTED = {
    ("DELETE", "/api/v1/auth/api-keys/{id}"): KEY_ID,
    ("POST", "/api/v1/auth/api-keys/{id}/rotate"): KEY_ID,
    ("PATCH", "/api/v1/users/{id}"): ADMIN_ID,
    ("DELETE", "/api/v1/users/{id}"): ADMIN_ID,
    ("PATCH", "/api/v1/models/{id}"): MODEL_ID,
    ("DELETE", "/api/v1/models/{id}"): MODEL_ID,
}

# The code of each status (README, "Errors"); other 4xx are VALIDATION_ERROR.
CODES = {
    400: "VALIDATION_ERROR",
    401: "AUTHENTICATION_FAILED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMITED",
    431: "PAYLOAD_TOO_LARGE",
    503: "SERVICE_UNAVAILABLE",
}
OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}


def expected_code(status):
    if status >= 500 and status != 503:
        return "INTERNAL_ERROR"
    return CODES.get(status, "VALIDATION_ERROR")


def _mode(case):
    meta = getattr(case, "meta", None)
    return meta.generation.mode if meta is not None else None


@schemathesis.hook
def before_call(context, case, kwargs):
    key = (case.method.upper(), case.path)
    protected = PROTECTED.get(key)
    if protected is not None and str(case.path_parameters.get("id")) == protected:
        case.path_parameters["id"] = MODEL_ID + "-absent" if protected == MODEL_ID else ABSENT_ID
    if key in INFERENCE and isinstance(case.body, dict):
        body = case.body
        for field in TOKEN_FIELDS:
            value = body.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
                body[field] = MAX_TOKENS
        if not any(field in body for field in TOKEN_FIELDS):
            body["max_tokens"] = MAX_TOKENS
        if _mode(case) == GenerationMode.POSITIVE:
            acceptable(case.path, body)


PRIORITIES = ("low", "normal", "high", "critical")
ROLES = ("system", "user", "assistant")
# What the /v1 routes refuse as unsupported (not part of an answer's shape).
OPENAI_UNSUPPORTED = (
    "logprobs", "top_logprobs", "echo", "suffix", "best_of", "logit_bias", "tools",
    "tool_choice", "functions", "response_format", "presence_penalty", "frequency_penalty",
)
# Per route, the fields its request body declares; /api/v1 requests refuse any other.
DECLARED = {
    "/api/v1/inference": (
        "model", "prompt", "messages", "max_tokens", "temperature", "top_k", "top_p",
        "min_p", "repeat_penalty", "seed", "stop", "priority", "stream", "detach", "cache",
    ),
}
DECLARED["/api/v1/jobs"] = DECLARED["/api/v1/inference"]


def _text(value):
    return isinstance(value, str) and value.strip() != ""


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def acceptable(path, body):
    """Turns a positive inference body into one the server accepts (see the module docs)."""
    declared = DECLARED.get(path)
    if declared is not None:
        for field in [f for f in body if f not in declared]:
            del body[field]
    for field in OPENAI_UNSUPPORTED:
        body.pop(field, None)
    body["model"] = MODEL_ID
    for field in ("n",):
        if field in body:
            body[field] = 1
    for field in TOKEN_FIELDS:
        if field in body and not (_number(body[field]) and 1 <= body[field] <= MAX_TOKENS):
            body[field] = MAX_TOKENS
    if not _number(body.get("temperature", 0)) or not 0 <= body.get("temperature", 0) <= 2:
        body["temperature"] = 0.7
    if "top_p" in body and not (_number(body["top_p"]) and 0 < body["top_p"] <= 1):
        body["top_p"] = 0.9
    if "min_p" in body and not (_number(body["min_p"]) and 0 <= body["min_p"] <= 1):
        body["min_p"] = 0.05
    if "top_k" in body and not (_number(body["top_k"]) and 1 <= body["top_k"] <= 1000):
        body["top_k"] = 40
    if "repeat_penalty" in body and not (
        _number(body["repeat_penalty"]) and 0 < body["repeat_penalty"] <= 2
    ):
        body["repeat_penalty"] = 1.1
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, list) and len(stop) <= 8 and all(_text(s) and len(s) <= 64 for s in stop)
    ) and not (_text(stop) and len(stop) <= 64):
        body.pop("stop")
    if "seed" in body and not (_number(body["seed"]) and 0 <= body["seed"] <= 2**32 - 1):
        body["seed"] = 7
    if "priority" in body and body["priority"] not in PRIORITIES:
        body["priority"] = "normal"
    if path == "/v1/completions":
        if not _text(body.get("prompt")):
            body["prompt"] = "Hello"
        return
    messages = body.get("messages")
    valid = [
        {**m, "role": m.get("role") if m.get("role") in ROLES else "user"}
        for m in (messages if isinstance(messages, list) else [])
        if isinstance(m, dict) and _text(m.get("content"))
    ]
    if path == "/v1/chat/completions":
        body["messages"] = valid or [{"role": "user", "content": "Hello"}]
        return
    # /api/v1: one of prompt or messages.
    if _text(body.get("prompt")):
        body.pop("messages", None)
    else:
        body.pop("prompt", None)
        body["messages"] = [
            {"role": m["role"], "content": m["content"]} for m in valid
        ] or [{"role": "user", "content": "Hello"}]


@schemathesis.hook
def after_call(context, case, response):
    if (case.method.upper(), case.path) == ("POST", "/api/v1/queue/pause") and response.status_code == 200:
        auth = {"X-API-Key": os.environ["INFERNO_FUZZ_KEY"]}
        requests.post(f"{BASE_URL}/api/v1/queue/resume", headers=auth, timeout=10).raise_for_status()


@schemathesis.check
def error_body(ctx, response, case):
    """Every 4xx/5xx body is the documented error body of its route."""
    status = response.status_code
    if status < 400:
        return None
    try:
        body = response.json()
    except Exception:
        raise AssertionError(f"the {status} body is not JSON: {response.text[:200]!r}")
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(body) != {"error"}:
        raise AssertionError(f"the {status} body is not {{\"error\": {{...}}}}: {body!r}")
    if case.path.startswith("/v1/"):
        keys = {"message", "type", "param", "code"}
        if set(error) != keys:
            raise AssertionError(f"OpenAI error keys {sorted(error)} are not {sorted(keys)}")
        if not isinstance(error["message"], str) or not error["message"]:
            raise AssertionError("OpenAI error without a message")
        kind = "server_error" if status >= 500 else OPENAI_TYPES.get(status, "invalid_request_error")
        if error["type"] != kind:
            raise AssertionError(f"OpenAI error type {error['type']!r} for {status}, expected {kind!r}")
        for field in ("param", "code"):
            if error[field] is not None and not isinstance(error[field], str):
                raise AssertionError(f"OpenAI error {field} is neither a string nor null")
        if error["code"] != expected_code(status).lower():
            raise AssertionError(f"OpenAI error code {error['code']!r} for {status}")
        return None
    keys = {"code", "message", "details"}
    if set(error) != keys:
        raise AssertionError(f"error keys {sorted(error)} are not {sorted(keys)}")
    if error["code"] != expected_code(status):
        raise AssertionError(f"error code {error['code']!r} for {status}, expected {expected_code(status)!r}")
    if not isinstance(error["message"], str) or not error["message"]:
        raise AssertionError("error without a message")
    if error["details"] is not None and not isinstance(error["details"], dict):
        raise AssertionError(f"error details {error['details']!r} are neither an object nor null")
    return None
