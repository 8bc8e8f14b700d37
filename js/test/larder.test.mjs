// The npm package under Node's test runner: golden vectors shared with the Rust crates,
// the cache in memory and (with LARDER_JS_REDIS_URL, set by native/tests/gateway/js.rs)
// through larder gateway to a real Redis, and property tests that no input makes the wasm
// trap. Run (in js/): node --test test/larder.test.mjs
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { test, describe } from "node:test";
import fc from "fast-check";
import {
  CacheError,
  ConfigError,
  InvalidInputError,
  Keyring,
  Larder,
  LarderError,
  StreamError,
  canonicalJson,
  decodeEnvelope,
  encodeEnvelope,
  requestHash,
  requestHashOfJson,
} from "larder";

const data = (name) => JSON.parse(readFileSync(new URL(`../../core/tests/data/${name}`, import.meta.url), "utf8"));
const unique = () => `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const b64 = (s) => Buffer.from(s).toString("base64");

const REDIS = process.env.LARDER_JS_REDIS_URL
  ? { url: process.env.LARDER_JS_REDIS_URL, token: process.env.LARDER_JS_REDIS_TOKEN, base64Args: true }
  : undefined;
if (!REDIS && process.env.LARDER_JS_TESTS === "require") {
  throw new Error("LARDER_JS_TESTS=require but LARDER_JS_REDIS_URL is not set");
}

/** Whether a parsed JSON value kept every integer exact (JavaScript numbers stop at 2^53). */
function exactInJs(v) {
  if (typeof v === "number") return !Number.isInteger(v) || Number.isSafeInteger(v);
  if (Array.isArray(v)) return v.every(exactInJs);
  if (v && typeof v === "object") return Object.values(v).every(exactInJs);
  return true;
}

describe("golden vectors (docs/KEY_FORMAT.md)", () => {
  test("request hashes and canonical JSON match the Rust crates'", () => {
    const { vectors } = data("key_vectors.json");
    let fromValues = 0;
    for (const v of vectors) {
      // The exact text, integers up to 64 bits included (typed vectors hold 128-bit ones).
      if (v.request_typed === undefined) assert.equal(requestHashOfJson(v.canonical), v.sha256, v.name);
      assert.equal(canonicalJson(JSON.parse(v.canonical)) === v.canonical || !exactInJs(JSON.parse(v.canonical)), true, v.name);
      if (v.request_typed !== undefined || !exactInJs(v.request)) continue;
      assert.equal(canonicalJson(v.request), v.canonical, v.name);
      assert.equal(requestHash(v.request), v.sha256, v.name);
      fromValues++;
    }
    assert.ok(vectors.length >= 51, `${vectors.length} vectors`);
    assert.ok(fromValues >= 35, `only ${fromValues} vectors checked from JavaScript values`);
  });

  test("keyed hashes and sealed values match the Rust crates'", () => {
    const v = data("seal_vectors.json");
    assert.equal(requestHashOfJson(v.hash.canonical, { secret: b64(v.hash.secret) }), v.hash.hmac_sha256_hex);
    const ring = new Keyring(v.keys);
    const sealed = Buffer.from(v.seal.sealed_b64, "base64");
    assert.equal(new TextDecoder().decode(ring.open(v.seal.redis_key, sealed)), v.seal.plaintext);
    // Bound to its Redis key: under another key it does not open.
    assert.equal(ring.open(`${v.seal.redis_key}x`, sealed), undefined);
    // Sealed here, opened here (a fresh nonce each time).
    const again = ring.seal("k", "secret answer");
    assert.notDeepEqual(again, ring.seal("k", "secret answer"));
    assert.equal(new TextDecoder().decode(ring.open("k", again)), "secret answer");
    // The old key still opens what it sealed (rotation): k1 alone seals, k2,k1 opens.
    const old = new Keyring(v.keys.split(",")[1]).seal("k", "old");
    assert.equal(new TextDecoder().decode(ring.open("k", old)), "old");
  });

  test("a recorded stream's envelope decodes, and re-encodes to the same envelope", () => {
    const v = data("stream_envelope.json");
    const e = decodeEnvelope(new TextEncoder().encode(v.envelope));
    assert.deepEqual(e, JSON.parse(v.envelope));
    assert.equal(e.stream.format, "openai.chat");
    // JavaScript numbers drop `.0` ("temperature":0.0 comes back as 0), so the bytes are
    // compared through a decode; Rust and JavaScript exchange the bytes themselves in
    // native/tests/gateway/js.rs.
    assert.deepEqual(decodeEnvelope(encodeEnvelope(e)), e);
  });
});

describe("errors", () => {
  test("bad input is an InvalidInputError, bad options a ConfigError", async () => {
    const c = new Larder();
    assert.throws(() => c.key({ messages: [] }), InvalidInputError);
    assert.throws(() => c.key("gpt-4o"), InvalidInputError);
    await assert.rejects(c.getOrCompute({ model: "m" }, async () => 42), InvalidInputError);
    await assert.rejects(c.get({ model: "m" }, { ttlMs: -1 }), InvalidInputError);
    assert.throws(() => requestHash({ n: 1n }), InvalidInputError);
    assert.throws(() => requestHashOfJson("{not json"), InvalidInputError);
    assert.throws(() => new Larder({ url: "redis://127.0.0.1:6379", token: "t" }), ConfigError);
    assert.throws(() => new Larder({ url: "http://127.0.0.1:1", token: "" }), ConfigError);
    assert.throws(() => new Larder({ encryptionKeys: "k1:c2hvcnQ=" }), ConfigError);
    assert.throws(() => new Larder({ prefix: "a{b}" }), ConfigError);
    assert.throws(() => new Larder({ colour: "blue" }), ConfigError);
    // A misspelt control is refused, never ignored.
    assert.throws(() => c.key({ model: "m" }, { ttl: 5 }), InvalidInputError);
    await assert.rejects(c.get({ model: "m" }, { nameSpace: "t" }), /unknown field/);
    assert.throws(() => new Keyring("nope"), ConfigError);
    for (const E of [ConfigError, InvalidInputError, CacheError, StreamError]) {
      assert.ok(new E("x") instanceof LarderError);
      assert.ok(new E("x") instanceof Error);
    }
  });

  test("a Redis that accepts and never answers costs at most the timeout", async () => {
    const sockets = [];
    const hung = createServer((s) => sockets.push(s));
    await new Promise((r) => hung.listen(0, "127.0.0.1", r));
    try {
      const c = new Larder({ url: `http://127.0.0.1:${hung.address().port}`, token: "t", timeoutMs: 300 });
      let started = Date.now();
      const a = await c.getOrCompute({ model: "m", prompt: unique() }, async () => "computed anyway");
      assert.equal(a.text, "computed anyway");
      assert.ok(Date.now() - started < 2500, `${Date.now() - started} ms`);
      started = Date.now();
      await assert.rejects(c.get({ model: "m", prompt: "x" }), CacheError);
      assert.ok(Date.now() - started < 1500, `${Date.now() - started} ms`);
      assert.ok(sockets.length >= 1, "the requests reached the hung server");
    } finally {
      for (const s of sockets) s.destroy();
      hung.close();
    }
  });

  test("a computation's own error is rethrown as it was", async () => {
    const c = new Larder();
    const mine = new RangeError("the model is down");
    await assert.rejects(
      c.getOrCompute({ model: "m", n: unique() }, async () => {
        throw mine;
      }),
      (e) => e === mine,
    );
  });
});

/** The cache contract, for memory and Redis: `make()` gives a new handle on the same cache. */
function contract(name, make) {
  describe(name, () => {
    test("MISS then HIT, and another handle sees the HIT", async () => {
      const c = make();
      const request = { model: "gpt-4o-mini", messages: [{ role: "user", content: `Capital of France? ${unique()}` }] };
      let calls = 0;
      const compute = async () => {
        calls++;
        return { text: "Paris.", usage: { promptTokens: 12, completionTokens: 2 }, metadata: { finish: "stop" } };
      };
      const a = await c.getOrCompute(request, compute);
      assert.equal(a.status, "MISS");
      assert.equal(a.text, "Paris.");
      const b = await c.getOrCompute(request, compute);
      assert.deepEqual([b.status, b.text, b.usage, b.metadata], ["HIT", "Paris.", { promptTokens: 12, completionTokens: 2 }, { finish: "stop" }]);
      assert.ok(b.storedAtMs > Date.now() - 60_000 && b.storedAtMs <= Date.now());
      const other = await make().get(request);
      assert.equal(other.status, "HIT");
      assert.equal(calls, 1);
      // Key order and `stream` do not change the key.
      const reordered = { messages: request.messages, stream: false, model: request.model };
      assert.equal((await c.get(reordered)).text, "Paris.");
    });

    test("20 concurrent identical calls, on two handles, compute once", async () => {
      const [c1, c2] = [make(), make()];
      const request = { model: "m", prompt: unique() };
      let calls = 0;
      const compute = async () => {
        calls++;
        await sleep(150);
        return "one answer";
      };
      const answers = await Promise.all(
        Array.from({ length: 20 }, (_, i) => (i % 2 ? c1 : c2).getOrCompute(request, compute)),
      );
      assert.equal(calls, 1);
      assert.ok(answers.every((a) => a.text === "one answer"));
      assert.equal(answers.filter((a) => a.status === "MISS").length, 1);
    });

    test("TTL, namespaces, tags, no-store and delete", async () => {
      const c = make();
      const ns = `tenant-${unique()}`;
      const r1 = { model: "m", prompt: `a ${unique()}` };
      const r2 = { model: "m", prompt: `b ${unique()}` };
      await c.put(r1, "one", { namespace: ns, tags: ["geo"] });
      await c.put(r2, "two", { namespace: ns });
      assert.equal((await c.get(r1, { namespace: ns })).text, "one");
      assert.equal(await c.get(r1), undefined, "another namespace is another cache");
      await c.invalidateTag("geo");
      assert.equal(await c.get(r1, { namespace: ns }), undefined);
      assert.equal((await c.get(r2, { namespace: ns })).text, "two");
      await c.invalidateNamespace(ns);
      assert.equal(await c.get(r2, { namespace: ns }), undefined);

      const r3 = { model: "m", prompt: `c ${unique()}` };
      await c.getOrCompute(r3, async () => "not kept", { noStore: true });
      assert.equal(await c.get(r3), undefined);
      await c.put(r3, "short", { ttlMs: 200 });
      assert.equal((await c.get(r3)).text, "short");
      await sleep(400);
      assert.equal(await c.get(r3), undefined);
      await c.put(r3, "kept");
      assert.equal(await c.delete(r3), true);
      assert.equal(await c.delete(r3), false);
    });

    test("a stream: MISS passes it on, HIT replays it event for event; a cut stream is not stored", async () => {
      const c = make();
      const request = { model: "gpt-4o-mini", messages: [{ role: "user", content: `Hi ${unique()}` }], stream: true };
      const chunk = (content, finish = null) =>
        `data: ${JSON.stringify({ id: "c1", object: "chat.completion.chunk", model: "gpt-4o-mini", choices: [{ index: 0, delta: { content }, finish_reason: finish }] })}\n\n`;
      const body = [chunk("Hel"), chunk("lo"), chunk("", "stop"), "data: [DONE]\n\n"];
      let opened = 0;
      const open = async () => {
        opened++;
        // Split anywhere: the parser must not care.
        const text = body.join("");
        return new Response(new ReadableStream({
          start(ctl) {
            for (let i = 0; i < text.length; i += 7) ctl.enqueue(new TextEncoder().encode(text.slice(i, i + 7)));
            ctl.close();
          },
        }));
      };
      const read = async (s) => {
        const out = [];
        for await (const e of s) out.push(e);
        return out;
      };
      const first = await c.stream(request, open);
      assert.equal(first.status, "MISS");
      const live = await read(first);
      assert.equal(live.map((e) => e.sse).join(""), body.join(""));
      const again = await make().stream(request, open);
      assert.equal(again.status, "HIT");
      assert.deepEqual(await read(again), live);
      assert.equal(opened, 1);
      // Stored as an answer too: its text for non-streaming readers.
      assert.equal((await c.get(request)).text, "Hello");

      const cut = { ...request, messages: [{ role: "user", content: `cut ${unique()}` }] };
      const s = await c.stream(cut, async () => [chunk("Hel")]);
      await assert.rejects(read(s), StreamError);
      assert.equal((await c.stream(cut, async () => body)).status, "MISS", "a cut stream was not stored");

      // The upstream's own error reaches the reader as it was thrown.
      const failing = { ...request, messages: [{ role: "user", content: `fail ${unique()}` }] };
      const boom = new Error("connection reset");
      const f = await c.stream(failing, async () => ({
        async *[Symbol.asyncIterator]() {
          yield chunk("Hel");
          throw boom;
        },
      }));
      await assert.rejects(read(f), (e) => e === boom);
      // A non-2xx Response is the upstream failing: nothing is streamed or stored.
      await assert.rejects(c.stream(failing, async () => new Response("overloaded", { status: 529 })), /529/);
    });

    test("statistics count hits and tokens saved", async () => {
      const c = make();
      const model = `stats-${unique()}`;
      const request = { model, prompt: "x" };
      await c.getOrCompute(request, async () => ({ text: "y", usage: { promptTokens: 10, completionTokens: 5 } }));
      await c.getOrCompute(request, async () => "never");
      await c.flush();
      const s = await c.stats();
      assert.equal(s.models[model].hits, 1);
      assert.equal(s.models[model].misses, 1);
      assert.equal(s.models[model].promptTokensSaved, 10);
      assert.ok(s.total.hits >= 1);
    });
  });
}

contract("memory (no Redis)", () => new Larder());

if (REDIS) {
  const prefix = `js-${unique()}`;
  contract("Redis through larder gateway", () => new Larder({ ...REDIS, prefix }));

  describe("Redis specifics", () => {
    test("fromEnv reads the Upstash variables and larder's", async () => {
      const env = {
        UPSTASH_REDIS_REST_URL: REDIS.url,
        UPSTASH_REDIS_REST_TOKEN: REDIS.token,
        LARDER_REST_BASE64_ARGS: "TRUE",
        LARDER_PREFIX: prefix,
      };
      const c = Larder.fromEnv(env);
      assert.equal(c.backend, "redis");
      assert.equal(Larder.fromEnv({}).backend, "memory");
      const request = { model: "m", prompt: unique() };
      await c.put(request, "from env");
      assert.equal((await new Larder({ ...REDIS, prefix }).get(request)).text, "from env");
      assert.throws(() => Larder.fromEnv({ ...env, LARDER_HASH_SECRET: "c2hvcnQ=" }), /LARDER_HASH_SECRET/);
      assert.throws(() => Larder.fromEnv({ ...env, UPSTASH_REDIS_REST_TOKEN: " " }), /UPSTASH_REDIS_REST_TOKEN/);
      assert.throws(() => Larder.fromEnv(env, { colour: "blue" }), ConfigError);
      // Options win over the variables.
      const other = Larder.fromEnv(env, { prefix: `${prefix}-other` });
      assert.equal(await other.get(request), undefined);
    });

    test("encrypted and keyed: readable with the keys, opaque without", async () => {
      const keys = `k2:${b64("2".repeat(32))},k1:${b64("1".repeat(32))}`;
      const secret = b64("a hash secret of 32 bytes, ok!!!");
      const sealed = new Larder({ ...REDIS, prefix, encryptionKeys: keys, hashSecret: secret });
      const plain = new Larder({ ...REDIS, prefix });
      const request = { model: "m", prompt: `secret ${unique()}` };
      await sealed.put(request, "the secret answer");
      assert.equal((await sealed.get(request)).text, "the secret answer");
      assert.notEqual(sealed.key(request), plain.key(request), "keyed hashes differ from plain ones");
      const hash = sealed.key(request).split(":").pop();
      assert.notEqual(hash, requestHash({ model: "m", prompt: request.prompt }), "no plain hash names it");
      assert.equal(await plain.getEnvelope(hash), undefined, "a sealed value is no envelope without the key");
      // Rotation: a cache whose current key is new reads what the old key sealed.
      const rotated = new Larder({ ...REDIS, prefix, encryptionKeys: `k3:${b64("3".repeat(32))},${keys}`, hashSecret: secret });
      assert.equal((await rotated.get(request)).text, "the secret answer");
    });

    test("an unreachable Redis never fails getOrCompute, and never blocks past the timeout", async () => {
      const c = new Larder({ url: "http://127.0.0.1:9", token: "t", timeoutMs: 300 });
      const started = Date.now();
      const a = await c.getOrCompute({ model: "m", prompt: unique() }, async () => "computed anyway");
      assert.equal(a.text, "computed anyway");
      assert.equal(a.status, "MISS");
      assert.ok(Date.now() - started < 3000, `${Date.now() - started} ms`);
      await assert.rejects(c.get({ model: "m", prompt: "x" }), CacheError);
      const strict = new Larder({ url: "http://127.0.0.1:9", token: "t", timeoutMs: 300, failOpen: false });
      await assert.rejects(strict.getOrCompute({ model: "m", prompt: unique() }, async () => "x"), CacheError);
    });

    test("each lookup is one HTTP request", async () => {
      const c = new Larder({ ...REDIS, prefix });
      const request = { model: "m", prompt: unique() };
      await c.put(request, "x");
      const before = c.redisRequests;
      assert.equal((await c.get(request)).status, "HIT");
      assert.equal(c.redisRequests - before, 1);
    });
  });
}

describe("no input makes the wasm trap (property tests)", () => {
  const noTrap = (f) => {
    try {
      f();
    } catch (e) {
      assert.ok(e instanceof LarderError, `${e?.name}: ${e?.message}`);
      assert.ok(!(e instanceof WebAssembly.RuntimeError));
    }
  };

  test("hashes of any JSON value", () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        const h = requestHash(v);
        assert.match(h, /^[0-9a-f]{64}$/);
        assert.equal(requestHashOfJson(JSON.stringify(v)), h);
        const c = canonicalJson(v);
        assert.equal(canonicalJson(JSON.parse(c)), c);
      }),
      { numRuns: 500 },
    );
  });

  test("any text as JSON, any bytes as an envelope or a sealed value", () => {
    const ring = new Keyring(`k1:${b64("1".repeat(32))}`);
    fc.assert(
      fc.property(fc.string(), fc.uint8Array({ maxLength: 300 }), (text, bytes) => {
        noTrap(() => requestHashOfJson(text));
        noTrap(() => canonicalJson(text));
        const e = decodeEnvelope(bytes);
        assert.ok(e === undefined || typeof e.response === "string");
        assert.equal(ring.open(text, bytes), undefined);
        noTrap(() => new Keyring(text));
        noTrap(() => requestHash({}, { secret: text }));
      }),
      { numRuns: 500 },
    );
  });

  test("any request, response and options for the cache", async () => {
    const c = new Larder();
    await fc.assert(
      fc.asyncProperty(fc.anything(), fc.anything(), fc.anything(), async (request, response, options) => {
        noTrap(() => c.key(request, options));
        try {
          await c.getOrCompute(request, async () => response, options);
        } catch (e) {
          assert.ok(e instanceof LarderError, `${e?.name}: ${e?.message}`);
        }
        try {
          encodeEnvelope(response);
        } catch (e) {
          assert.ok(e instanceof LarderError, `${e?.name}: ${e?.message}`);
        }
      }),
      { numRuns: 300 },
    );
  });
});
