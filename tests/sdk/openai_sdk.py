"""The official `openai` SDK against a running Inferno, unchanged but for base_url and key.

Run by tests/openai_sdk.rs with INFERNO_URL, INFERNO_KEY (run_inference, use_streaming,
read_models), INFERNO_KEY_NO_STREAM (no use_streaming), INFERNO_KEY_MODELS_ONLY
(read_models only), INFERNO_KEY_LIMITED (2 requests a minute) and INFERNO_MODEL. Prints one
line per check and exits non-zero at the first failure.
"""
import os
import sys

import openai
from openai import OpenAI

URL = os.environ["INFERNO_URL"] + "/v1"
MODEL = os.environ["INFERNO_MODEL"]


def client(key):
    return OpenAI(base_url=URL, api_key=key, max_retries=0, timeout=120)


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name}: {detail}")
        sys.exit(1)
    print(f"ok {name}")


def raises(name, cls, status, fn):
    try:
        fn()
    except cls as e:
        check(name, e.status_code == status, f"status {e.status_code}")
        body = e.body if isinstance(e.body, dict) else {}
        check(name + " body", bool(body.get("message")) and "type" in body, repr(e.body))
        return e
    except Exception as e:  # noqa: BLE001
        check(name, False, f"raised {type(e).__name__}: {e}")
    check(name, False, "no exception")


c = client(os.environ["INFERNO_KEY"])
print("openai", openai.__version__)

models = c.models.list()
check("models.list", MODEL in [m.id for m in models.data], str(models))

comp = c.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
check("completion text", len(comp.choices) == 1 and comp.choices[0].text != "", str(comp))
check("completion finish_reason", comp.choices[0].finish_reason in ("stop", "length"), str(comp))
check("completion usage", comp.usage.completion_tokens >= 1
      and comp.usage.total_tokens == comp.usage.prompt_tokens + comp.usage.completion_tokens, str(comp.usage))
check("completion ids", comp.id.startswith("cmpl-") and comp.system_fingerprint.startswith("fp_")
      and comp.created > 0 and comp.model == MODEL, str(comp))

two = c.completions.create(model=MODEL, prompt=["One, two,", "Red, green,"], max_tokens=4, temperature=0)
check("completion of two prompts", [ch.index for ch in two.choices] == [0, 1], str(two))

messages = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}]
chat = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
text = chat.choices[0].message.content
check("chat", chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
      and text, str(chat))
check("chat ids", chat.id.startswith("chatcmpl-") and chat.system_fingerprint.startswith("fp_"), str(chat))

chunks = list(c.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0,
                                        stream=True, stream_options={"include_usage": True}))
joined = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
check("streamed chat equals the plain answer", joined == text, f"{joined!r} != {text!r}")
check("stream chunk objects", all(ch.object == "chat.completion.chunk" for ch in chunks), "")
finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
check("stream finish_reason", finish == [chat.choices[0].finish_reason], str(finish))
check("include_usage", chunks[-1].choices == [] and chunks[-1].usage is not None
      and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens, str(chunks[-1]))
plain_chunks = list(c.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, stream=True))
check("no usage chunk unless asked", all(ch.usage is None for ch in plain_chunks), str(plain_chunks[-1]))

streamed = "".join(ch.choices[0].text for ch in c.completions.create(
    model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True))
check("streamed completion equals the plain one", streamed == comp.choices[0].text,
      f"{streamed!r} != {comp.choices[0].text!r}")

raw = c.models.with_raw_response.list()
check("rate-limit headers", raw.headers.get("x-ratelimit-limit-requests") is not None
      and raw.headers.get("x-ratelimit-remaining-requests") is not None
      and raw.headers.get("x-ratelimit-reset-requests", "").endswith("s"), str(dict(raw.headers)))

raises("AuthenticationError", openai.AuthenticationError, 401,
       lambda: client("inf_not-a-real-key").models.list())
raises("PermissionDeniedError", openai.PermissionDeniedError, 403,
       lambda: client(os.environ["INFERNO_KEY_MODELS_ONLY"]).chat.completions.create(
           model=MODEL, messages=messages, max_tokens=2))
e = raises("PermissionDeniedError (stream)", openai.PermissionDeniedError, 403,
           lambda: client(os.environ["INFERNO_KEY_NO_STREAM"]).chat.completions.create(
               model=MODEL, messages=messages, max_tokens=2, stream=True))
check("names use_streaming", "use_streaming" in e.message, e.message)
raises("NotFoundError", openai.NotFoundError, 404,
       lambda: c.chat.completions.create(model="no-such-model", messages=messages, max_tokens=2))
e = raises("BadRequestError (n)", openai.BadRequestError, 400,
           lambda: c.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, n=2))
check("param n", e.param == "n", str(e.body))
e = raises("BadRequestError (tools)", openai.BadRequestError, 400,
           lambda: c.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, tools=[
               {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]))
check("param tools", e.param == "tools", str(e.body))
raises("BadRequestError (response_format)", openai.BadRequestError, 400,
       lambda: c.chat.completions.create(model=MODEL, messages=messages, max_tokens=2,
                                         response_format={"type": "json_object"}))
raises("BadRequestError (type)", openai.BadRequestError, 400,
       lambda: c.chat.completions.create(model=MODEL, messages=messages, max_tokens="many"))
limited = client(os.environ["INFERNO_KEY_LIMITED"])
limited.models.list()
limited.models.list()
raises("RateLimitError", openai.RateLimitError, 429, lambda: limited.models.list())
print("all checks passed")
