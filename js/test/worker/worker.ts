// A TypeScript Worker on the `larder` npm package, bundled with esbuild and served by workerd
// for native/tests/gateway/js.rs: the cache through larder gateway to a real Redis, shared
// with the Rust crates and the Rust Worker; the golden vectors checked inside workerd; the
// Vercel AI SDK (ai 7, which needs Node ≥ 22 but runs here) with larder's middleware.
import { Keyring, Larder, canonicalJson, requestHash, requestHashOfJson, type LlmRequest } from "larder";
import { larderMiddleware } from "larder/ai-sdk";
import { generateText, streamText, wrapLanguageModel } from "ai";
import { MockLanguageModelV4, convertArrayToReadableStream } from "ai/test";
import type { LanguageModelV4StreamPart } from "@ai-sdk/provider";
import keyVectors from "../../../core/tests/data/key_vectors.json";
import sealVectors from "../../../core/tests/data/seal_vectors.json";

/** The part of the Workers runtime's context this Worker uses. */
interface ExecutionContext {
  waitUntil(promise: Promise<unknown>): void;
}

interface Env {
  [name: string]: string | undefined;
}

const json = (body: unknown, status = 200): Response =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });

function exactInJs(v: unknown): boolean {
  if (typeof v === "number") return !Number.isInteger(v) || Number.isSafeInteger(v);
  if (Array.isArray(v)) return v.every(exactInJs);
  if (v && typeof v === "object") return Object.values(v).every(exactInJs);
  return true;
}

function vectors(): { checked: number; mismatches: string[] } {
  const mismatches: string[] = [];
  let checked = 0;
  for (const v of keyVectors.vectors as Array<{ name: string; request: unknown; request_typed?: string; canonical: string; sha256: string }>) {
    if (v.request_typed !== undefined) continue;
    if (requestHashOfJson(v.canonical) !== v.sha256) mismatches.push(`${v.name} (text)`);
    checked++;
    if (!exactInJs(v.request)) continue;
    if (canonicalJson(v.request as never) !== v.canonical || requestHash(v.request as never) !== v.sha256) mismatches.push(v.name);
    checked++;
  }
  const s = sealVectors;
  if (requestHashOfJson(s.hash.canonical, { secret: btoa(s.hash.secret) }) !== s.hash.hmac_sha256_hex) mismatches.push("hmac");
  const sealed = Uint8Array.from(atob(s.seal.sealed_b64), (c) => c.charCodeAt(0));
  const opened = new Keyring(s.keys).open(s.seal.redis_key, sealed);
  if (opened === undefined || new TextDecoder().decode(opened) !== s.seal.plaintext) mismatches.push("seal");
  checked += 2;
  return { checked, mismatches };
}

const PARTS = (text: string): LanguageModelV4StreamPart[] => [
  { type: "stream-start", warnings: [] },
  { type: "response-metadata", id: "resp-1", modelId: "mock-model", timestamp: new Date(1_764_090_000_000) },
  { type: "text-start", id: "t1" },
  ...text.split(/(?<= )/).map((delta): LanguageModelV4StreamPart => ({ type: "text-delta", id: "t1", delta })),
  { type: "text-end", id: "t1" },
  {
    type: "tool-call",
    toolCallId: "call-1",
    toolName: "weather",
    input: JSON.stringify({ city: "Paris" }),
  },
  {
    type: "finish",
    finishReason: { unified: "stop", raw: "stop" },
    usage: {
      inputTokens: { total: 11, noCache: 11, cacheRead: 0, cacheWrite: 0 },
      outputTokens: { total: 7, text: 7, reasoning: 0 },
    },
  },
];

/** The AI SDK with a mock model that counts its calls, wrapped with larder's middleware. */
function model(cache: Larder, text: string) {
  const mock = new MockLanguageModelV4({
    modelId: "mock-model",
    doGenerate: async () => ({
      content: [{ type: "text", text }],
      finishReason: { unified: "stop", raw: "stop" },
      usage: {
        inputTokens: { total: 11, noCache: 11, cacheRead: 0, cacheWrite: 0 },
        outputTokens: { total: 7, text: 7, reasoning: 0 },
      },
      warnings: [],
      response: { id: "resp-1", modelId: "mock-model", timestamp: new Date(1_764_090_000_000) },
    }),
    doStream: async () => ({ stream: convertArrayToReadableStream(PARTS(text)) }),
  });
  return { mock, wrapped: wrapLanguageModel({ model: mock, middleware: larderMiddleware({ cache, ttlMs: 600_000 }) }) };
}

async function handle(req: Request, env: Env, ctx: ExecutionContext): Promise<Response> {
  const url = new URL(req.url);
  if (url.pathname === "/vectors") return json(vectors());
  const cache = Larder.fromEnv(env);
  const before = cache.redisRequests;
  const body: any = req.method === "POST" ? await req.json() : {};
  const done = (out: Record<string, unknown>) => {
    ctx.waitUntil(cache.flush());
    return json({ ...out, backend: cache.backend, requests: cache.redisRequests - before });
  };
  switch (url.pathname) {
    case "/compute": {
      const a = await cache.getOrCompute(body.request as LlmRequest, async () => ({ text: body.text, model: "worker-model" }), {
        namespace: body.namespace,
      });
      return done({ status: a.status, text: a.text, key: cache.key(body.request) });
    }
    case "/get": {
      const a = await cache.get(body.request as LlmRequest, { namespace: body.namespace });
      return done({ hit: a !== undefined, text: a?.text, status: a?.status });
    }
    case "/envelope/get":
      return done({ envelope: (await cache.getEnvelope(body.key)) ?? null });
    case "/envelope/set":
      await cache.setEnvelope(body.key, body.envelope, { ttlMs: 600_000 });
      return done({ ok: true });
    case "/stream": {
      const events: string[] = body.events;
      const s = await cache.stream(body.request as LlmRequest, async () => events);
      return new Response(s.toReadableStream(), {
        headers: { "content-type": "text/event-stream", "x-cache": s.status },
      });
    }
    case "/ai/generate": {
      const { mock, wrapped } = model(cache, body.text);
      const r = await generateText({ model: wrapped, prompt: body.prompt });
      return done({
        text: r.text,
        calls: mock.doGenerateCalls.length,
        timestampIsDate: r.response.timestamp instanceof Date,
        timestamp: r.response.timestamp.getTime(),
        inputTokens: r.usage.inputTokens,
      });
    }
    case "/ai/stream": {
      const { mock, wrapped } = model(cache, body.text);
      const r = streamText({ model: wrapped, prompt: body.prompt });
      const parts: unknown[] = [];
      for await (const part of r.fullStream) {
        if (part.type === "start-step" || part.type === "finish-step" || part.type === "start" || part.type === "finish") {
          // Step bookkeeping the SDK adds around the model's parts (with its own ids).
          parts.push({ type: part.type });
        } else {
          parts.push(part);
        }
      }
      const metadataDate = (await r.response).timestamp instanceof Date;
      return done({ text: await r.text, parts, calls: mock.doStreamCalls.length, metadataDate });
    }
    default:
      return json({ error: "unknown route" }, 404);
  }
}

export default {
  async fetch(req: Request, env: Env, ctx: ExecutionContext): Promise<Response> {
    try {
      return await handle(req, env, ctx);
    } catch (e) {
      const err = e as Error;
      return json({ error: `${err.name}: ${err.message}` }, 500);
    }
  },
};
