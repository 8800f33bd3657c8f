"""The whole flow through a client that openapi-python-client generated from openapi/openapi.json.

Run by tests/generated_sdks.rs with PYTHONPATH holding the generated package
`inferno_client`, and INFERNO_URL, INFERNO_PASSWORD (the bootstrap admin's) and
INFERNO_MODEL. Every call goes through generated code, except reading the job's event
stream: the generator has no SSE support, so that reads the raw response through the
generated client's own httpx client. Prints one line per step and, last, one line
`SUMMARY {json}` for the Rust test to check. Credentials are never printed.
"""
import json
import os
import sys
import time

from inferno_client import AuthenticatedClient, Client
from inferno_client.api.api_keys import create_api_key, revoke_api_key
from inferno_client.api.audit import get_audit_checkpoint
from inferno_client.api.auth import login, me
from inferno_client.api.inference import run_inference
from inferno_client.api.jobs import create_job, get_job
from inferno_client.api.models import list_models
from inferno_client.models import (
    CreateApiKey,
    CreatedApiKey,
    ErrorBody,
    InferenceRequest,
    InferenceResponse,
    Job,
    JobAccepted,
    LoginRequest,
    LoginResponse,
    ModelPage,
)

URL = os.environ["INFERNO_URL"]
MODEL = os.environ["INFERNO_MODEL"]


def fail(step, detail):
    print(f"FAIL {step}: {detail}")
    sys.exit(1)


def expect(step, parsed, cls, status, resp):
    if resp.status_code != status or not isinstance(parsed, cls):
        fail(step, f"status {resp.status_code}, body {resp.content[:500]!r}")
    print(f"ok {step}")
    return parsed


def key_client(key):
    # The apiKey scheme (X-API-Key), not the bearer one the JWT uses.
    return AuthenticatedClient(base_url=URL, token=key, prefix="", auth_header_name="X-API-Key",
                               timeout=120)


summary = {"generator": "openapi-python-client"}

r = login.sync_detailed(client=Client(base_url=URL),
                        body=LoginRequest(username="admin", password=os.environ["INFERNO_PASSWORD"]))
jwt = expect("login", r.parsed, LoginResponse, 200, r).token
admin = AuthenticatedClient(base_url=URL, token=jwt, timeout=120)

perms = ["read_models", "run_inference", "use_streaming"]
r = create_api_key.sync_detailed(client=admin, body=CreateApiKey(name="generated-python", permissions=perms))
created = expect("create api key", r.parsed, CreatedApiKey, 201, r)
summary["key_permissions"] = sorted(created.permissions)
key = key_client(created.key)

r = list_models.sync_detailed(client=key)
page = expect("list models", r.parsed, ModelPage, 200, r)
summary["models"] = [m.id for m in page.models]

r = run_inference.sync_detailed(client=key, body=InferenceRequest(
    model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0.0))
answer = expect("inference", r.parsed, InferenceResponse, 200, r)
summary["inference_text"] = answer.text
summary["inference_completion_tokens"] = answer.usage.completion_tokens

r = create_job.sync_detailed(client=key, body=InferenceRequest(
    model=MODEL, prompt="Count to ten:", max_tokens=8, temperature=0.0))
accepted = expect("queue job", r.parsed, JobAccepted, 202, r)
summary["job_accepted_status"] = accepted.status
job_id = accepted.job_id

deadline = time.monotonic() + 120
while True:
    r = get_job.sync_detailed(job_id, client=key)
    if r.status_code != 200 or not isinstance(r.parsed, Job):
        fail("read job", f"status {r.status_code}, body {r.content[:500]!r}")
    job = r.parsed
    if job.status in ("completed", "failed", "cancelled", "dead") or time.monotonic() > deadline:
        break
    time.sleep(0.1)
print(f"ok poll job ({job.status})")
summary["job_status"] = job.status
summary["job_text"] = job.result.text if job.result else None

# SSE: the generated stream_job would read the body as JSON; the raw stream instead.
events, data = [], []
with key.get_httpx_client().stream("GET", f"/api/v1/jobs/{job_id}/stream") as resp:
    summary["stream_content_type"] = resp.headers.get("content-type", "")
    name = None
    for line in resp.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and name is not None:
            events.append((name, json.loads("\n".join(data))))
            name, data = None, []
            if events[-1][0] in ("done", "error"):
                break
tokens = [d for n, d in events if n == "token"]
print(f"ok stream job ({len(tokens)} tokens)")
summary["stream_events"] = [n for n, _ in events if n != "token"]
summary["streamed_tokens"] = len(tokens)
summary["streamed_text"] = "".join(t["text"] for t in tokens)

r = revoke_api_key.sync_detailed(created.id, client=admin)
if r.status_code != 204:
    fail("revoke api key", f"status {r.status_code}")
print("ok revoke api key")
summary["revoke_status"] = r.status_code

r = me.sync_detailed(client=key)
summary["revoked_key_status"] = r.status_code
summary["revoked_key_code"] = r.parsed.error.code if isinstance(r.parsed, ErrorBody) else None
print(f"ok revoked key refused ({r.status_code})")

r = get_audit_checkpoint.sync_detailed(client=admin)
if r.status_code != 200 or not isinstance(r.parsed, str):
    fail("audit checkpoint", f"status {r.status_code}")
# A C2SP signed note: origin, tree size, root hash, blank line, signatures.
lines = r.parsed.split("\n")
summary["checkpoint_origin"] = lines[0]
summary["checkpoint_tree_size"] = int(lines[1])
summary["checkpoint_signed"] = any(line.startswith("\u2014 ") for line in lines[3:])
print("ok audit checkpoint")

print("SUMMARY " + json.dumps(summary))
