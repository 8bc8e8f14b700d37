// The official OpenAI JavaScript SDK (npm `openai`, pinned in package.json) against
// `larder proxy` in front of the fake provider. Run by native/tests/proxy (test
// `official_sdks`) with LARDER_PROXY_URL set: `node --test openai.test.mjs`.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import OpenAI from "openai";

const BASE = process.env.LARDER_PROXY_URL;
const RUN = randomUUID().slice(0, 8);
const client = (apiKey = "sk-js-tenant-a") =>
  new OpenAI({ baseURL: `${BASE}/v1`, apiKey, maxRetries: 0 });
const chat = (text, extra = {}) => ({
  model: "gpt-4o-mini",
  temperature: 0,
  messages: [{ role: "user", content: `${text} ${RUN}` }],
  ...extra,
});

async function twice(call) {
  const a = await call().withResponse();
  const b = await call().withResponse();
  return [a, b];
}

async function collect(stream) {
  const out = [];
  for await (const event of stream) out.push(JSON.stringify(event));
  return out;
}

test("chat completions: MISS then HIT, same answer", async () => {
  const c = client();
  const [a, b] = await twice(() => c.chat.completions.create(chat("plain")));
  assert.equal(a.response.headers.get("x-larder-cache"), "MISS");
  assert.equal(b.response.headers.get("x-larder-cache"), "HIT");
  assert.equal(a.data.id, b.data.id);
  assert.match(a.data.choices[0].message.content, /^You said: plain/);
});

test("chat completions streamed: identical chunks", async () => {
  const c = client();
  const args = chat("streamed", { stream: true, stream_options: { include_usage: true } });
  const a = await c.chat.completions.create(args).withResponse();
  const ea = await collect(a.data);
  const b = await c.chat.completions.create(args).withResponse();
  const eb = await collect(b.data);
  assert.equal(a.response.headers.get("x-larder-cache"), "MISS");
  assert.equal(b.response.headers.get("x-larder-cache"), "HIT");
  assert.deepEqual(ea, eb);
  assert.ok(ea.length > 3);
  assert.ok(ea.some((e) => e.includes('"usage":{')));
});

test("responses streamed and not", async () => {
  const c = client();
  const [a, b] = await twice(() => c.responses.create({ model: "gpt-4.1-mini", input: `r ${RUN}` }));
  assert.equal(b.response.headers.get("x-larder-cache"), "HIT");
  assert.equal(a.data.output_text, b.data.output_text);
  const args = { model: "gpt-4.1-mini", input: `rs ${RUN}`, stream: true };
  const s1 = await c.responses.create(args).withResponse();
  const e1 = await collect(s1.data);
  const s2 = await c.responses.create(args).withResponse();
  const e2 = await collect(s2.data);
  assert.equal(s2.response.headers.get("x-larder-cache"), "HIT");
  assert.deepEqual(e1, e2);
  assert.ok(e1.some((e) => e.includes("response.completed")));
});

test("embeddings", async () => {
  const c = client();
  const [a, b] = await twice(() =>
    c.embeddings.create({ model: "text-embedding-3-small", input: [`e ${RUN}`] }),
  );
  assert.equal(b.response.headers.get("x-larder-cache"), "HIT");
  assert.deepEqual(a.data.data[0].embedding, b.data.data[0].embedding);
});

test("tenants, stale on a 500, a 400 passed through and not stored", async () => {
  const a = await client("sk-js-a").chat.completions.create(chat("tenants")).withResponse();
  const b = await client("sk-js-b").chat.completions.create(chat("tenants")).withResponse();
  assert.equal(a.response.headers.get("x-larder-cache"), "MISS");
  assert.equal(b.response.headers.get("x-larder-cache"), "MISS");
  assert.notEqual(a.data.id, b.data.id);

  const c = client();
  const first = await c.chat.completions.create(chat("stale"), { headers: { "x-larder-ttl": "1" } });
  await new Promise((r) => setTimeout(r, 1200));
  const stale = await c.chat.completions
    .create(chat("stale"), { headers: { "x-fake-status": "500" } })
    .withResponse();
  assert.equal(stale.response.headers.get("x-larder-cache"), "STALE");
  assert.equal(stale.data.id, first.id);

  await assert.rejects(
    c.chat.completions.create(chat("bad"), { headers: { "x-fake-status": "400" } }),
    (e) => e instanceof OpenAI.BadRequestError && /fake failure 400/.test(e.message),
  );
  const after = await c.chat.completions.create(chat("bad")).withResponse();
  assert.equal(after.response.headers.get("x-larder-cache"), "MISS");
});
