// The whole flow through a client that @hey-api/openapi-ts generated from openapi/openapi.json.
//
// tests/generated_sdks.rs copies this file next to the generated `client/` folder, type-checks
// both with tsc (tsconfig.json beside this file) and runs it with tsx, with INFERNO_URL,
// INFERNO_PASSWORD (the bootstrap admin's) and INFERNO_MODEL. Every call, the job's event
// stream included (the generator makes an SSE client for a `text/event-stream` answer), goes
// through generated code. Prints one line per step and, last, `SUMMARY {json}` for the Rust
// test to check. Credentials are never printed.
import {
  createApiKey,
  getAuditCheckpoint,
  getJob,
  listModels,
  login,
  me,
  revokeApiKey,
  runInference,
  streamJob,
  type Job,
  type JobAccepted,
} from './client';
import { createClient, createConfig } from './client/client';

const url = process.env.INFERNO_URL!;
const model = process.env.INFERNO_MODEL!;

function fail(step: string, detail: string): never {
  console.log(`FAIL ${step}: ${detail}`);
  process.exit(1);
}

/** `data` of a generated call's result, or the end of the flow with the status. */
function expect<T>(step: string, r: { data?: T; error?: unknown; response?: Response }, status: number): T {
  if (r.response?.status !== status || r.data === undefined) {
    fail(step, `status ${r.response?.status}, error ${JSON.stringify(r.error)}`);
  }
  console.log(`ok ${step}`);
  return r.data;
}

const summary: Record<string, unknown> = { generator: '@hey-api/openapi-ts' };

const anonymous = createClient(createConfig({ baseUrl: url }));
const session = expect(
  'login',
  await login({
    client: anonymous,
    body: { username: 'admin', password: process.env.INFERNO_PASSWORD! },
  }),
  200,
);
// The JWT answers the bearer scheme; the key the apiKey one (X-API-Key).
const admin = createClient(
  createConfig({ baseUrl: url, auth: (a) => (a.type === 'http' ? session.token : undefined) }),
);

const created = expect(
  'create api key',
  await createApiKey({
    client: admin,
    body: { name: 'generated-ts', permissions: ['read_models', 'run_inference', 'use_streaming'] },
  }),
  201,
);
summary.key_permissions = [...created.permissions].sort();
const key = createClient(
  createConfig({ baseUrl: url, auth: (a) => (a.type === 'apiKey' ? created.key : undefined) }),
);

const page = expect('list models', await listModels({ client: key }), 200);
summary.models = page.models.map((m) => m.id);

const answer = expect(
  'inference',
  await runInference({
    client: key,
    body: { model, prompt: 'The capital of France is', max_tokens: 8, temperature: 0 },
  }),
  200,
);
summary.inference_text = answer.text;
summary.inference_completion_tokens = answer.usage.completion_tokens;

// POST /api/v1/jobs also streams (200, `text/event-stream`, with "stream": true), so the
// generator made `createJob` an SSE-only call; the generated client's own `post` reads the 202.
const accepted = expect(
  'queue job',
  (await key.post({
    url: '/api/v1/jobs',
    security: [{ scheme: 'bearer', type: 'http' }, { in: 'header', name: 'X-API-Key', type: 'apiKey' }],
    body: { model, prompt: 'Count to ten:', max_tokens: 8, temperature: 0 },
    headers: { 'Content-Type': 'application/json' },
  })) as { data?: JobAccepted; error?: unknown; response: Response },
  202,
);
summary.job_accepted_status = accepted.status;

let job: Job;
const deadline = Date.now() + 120_000;
for (;;) {
  const r = await getJob({ client: key, path: { id: accepted.job_id } });
  if (r.response.status !== 200 || !r.data) fail('read job', `status ${r.response.status}`);
  job = r.data;
  if (['completed', 'failed', 'cancelled', 'dead'].includes(job.status) || Date.now() > deadline) break;
  await new Promise((resolve) => setTimeout(resolve, 100));
}
console.log(`ok poll job (${job.status})`);
summary.job_status = job.status;
summary.job_text = job.result?.text ?? null;

const names: string[] = [];
const tokens: string[] = [];
const { stream } = await streamJob({
  client: key,
  path: { id: accepted.job_id },
  sseMaxRetryAttempts: 1,
  onSseEvent: (e) => {
    names.push(e.event ?? 'message');
  },
});
for await (const data of stream) {
  const name = names[names.length - 1];
  // `data` is the event's JSON; the spec names its shape per event type.
  const event = (typeof data === 'string' ? JSON.parse(data) : data) as { text?: string };
  if (name === 'token' && typeof event.text === 'string') tokens.push(event.text);
  if (name === 'done' || name === 'error') break;
}
console.log(`ok stream job (${tokens.length} tokens)`);
summary.stream_events = names.filter((n) => n !== 'token');
summary.streamed_tokens = tokens.length;
summary.streamed_text = tokens.join('');

const revoked = await revokeApiKey({ client: admin, path: { id: created.id } });
if (revoked.response.status !== 204) fail('revoke api key', `status ${revoked.response.status}`);
console.log('ok revoke api key');
summary.revoke_status = revoked.response.status;

const refused = await me({ client: key });
summary.revoked_key_status = refused.response.status;
summary.revoked_key_code = refused.error?.error.code ?? null;
console.log(`ok revoked key refused (${refused.response.status})`);

const note = expect('audit checkpoint', await getAuditCheckpoint({ client: admin }), 200);
// A C2SP signed note: origin, tree size, root hash, blank line, signatures.
const lines = note.split('\n');
summary.checkpoint_origin = lines[0];
summary.checkpoint_tree_size = Number(lines[1]);
summary.checkpoint_signed = lines.slice(3).some((l) => l.startsWith('\u2014 '));

console.log('SUMMARY ' + JSON.stringify(summary));
