// larder for JavaScript: the JavaScript side of the package. Every decision (keys, the
// envelope, the lease, stream recording, encryption) is larder-core's, compiled to wasm
// (../dist/wasm); this file converts arguments, errors and streams into JavaScript idiom and
// does the I/O with the platform's `fetch`.
import * as wasm from "../dist/wasm/larder.js";

/** Base class of every error larder throws (a computation's own errors are rethrown as they are). */
export class LarderError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = "LarderError";
  }
}
function subclass(name) {
  const E = class extends LarderError {
    constructor(message, options) {
      super(message, options);
      this.name = name;
    }
  };
  Object.defineProperty(E, "name", { value: name });
  return E;
}
/** Bad options or environment: a missing token, a malformed key or secret, a bad prefix. */
export const ConfigError = subclass("ConfigError");
/** A bad argument: a request that is not a JSON object with a model, bad controls, bad bytes. */
export const InvalidInputError = subclass("InvalidInputError");
/** Redis could not be reached or answered badly (only when the cache is not fail-open, and for admin calls). */
export const CacheError = subclass("CacheError");
/** A streamed answer that cannot go on: cut, its leader gone, or too slow a reader. */
export const StreamError = subclass("StreamError");

const ERRORS = { ConfigError, InvalidInputError, CacheError, StreamError };

// Errors made by the wasm side are plain `Error`s marked with `larderKind`; anything else
// (the caller's own errors, rethrown by core) passes through untouched. A wasm trap
// (`RuntimeError`) is a bug: it is wrapped so it still reads as larder's.
function convert(e) {
  if (e instanceof LarderError) return e;
  if (e instanceof Error && typeof e.larderKind === "string") {
    const E = ERRORS[e.larderKind] ?? LarderError;
    return new E(e.message);
  }
  if (typeof WebAssembly !== "undefined" && e instanceof WebAssembly.RuntimeError) {
    return new LarderError(`larder's wasm failed: ${e.message}`, { cause: e });
  }
  return e;
}

function call(f) {
  try {
    return f();
  } catch (e) {
    throw convert(e);
  }
}
async function wait(p) {
  try {
    return await p;
  } catch (e) {
    throw convert(e);
  }
}

// JSON with bytes: a Uint8Array (file parts, images in prompts) travels as
// {"$larder.bytes": base64}, and comes back as a Uint8Array.
const BYTES = "$larder.bytes";
function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}
function fromBase64(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
/** `JSON.stringify` that keeps `Uint8Array`s (as base64) and refuses what JSON cannot hold. */
export function toJson(value) {
  let text;
  try {
    text = JSON.stringify(value, (_k, v) =>
      v instanceof Uint8Array ? { [BYTES]: toBase64(v) } : typeof v === "bigint" ? invalidBigint() : v,
    );
  } catch (e) {
    throw e instanceof LarderError ? e : new InvalidInputError(`not JSON: ${e.message}`, { cause: e });
  }
  if (text === undefined) throw new InvalidInputError("not JSON: undefined");
  return text;
}
function invalidBigint() {
  throw new InvalidInputError("a BigInt cannot be hashed as a JSON value; pass the exact JSON text to requestHashOfJson");
}
/** `JSON.parse` that restores the `Uint8Array`s of {@link toJson}. */
export function fromJson(text) {
  return JSON.parse(text, (_k, v) =>
    v && typeof v === "object" && typeof v[BYTES] === "string" && Object.keys(v).length === 1 ? fromBase64(v[BYTES]) : v,
  );
}

// ---------------------------------------------------------------------------------------
// Keys and envelopes

/** The canonical JSON of a value (docs/KEY_FORMAT.md §3). */
export function canonicalJson(value) {
  return call(() => wasm.canonicalJson(toJson(value)));
}

/**
 * The request hash: 64 hex digits of SHA-256 over the canonical JSON, or of HMAC-SHA-256
 * with `secret` (base64, as LARDER_HASH_SECRET).
 */
export function requestHash(request, { secret } = {}) {
  return call(() => wasm.requestHash(toJson(request), secret));
}

/** {@link requestHash} of a JSON text, exact beyond ±2^53 (JavaScript numbers are not). */
export function requestHashOfJson(text, { secret } = {}) {
  if (typeof text !== "string") throw new InvalidInputError("requestHashOfJson takes a JSON text");
  return call(() => wasm.requestHash(text, secret));
}

/** The stored bytes of an envelope `{response, model?, timestamp?, metadata?}`. */
export function encodeEnvelope(envelope) {
  return call(() => wasm.encodeEnvelope(toJson(envelope)));
}

/**
 * The envelope stored in `bytes` (`{v, response, model, timestamp, metadata}`; raw text
 * written by other programs reads as `v: 0`), or `undefined` for bytes that are neither.
 */
export function decodeEnvelope(bytes) {
  if (!(bytes instanceof Uint8Array)) throw new InvalidInputError("decodeEnvelope takes a Uint8Array");
  const text = call(() => wasm.decodeEnvelope(bytes));
  return text === undefined ? undefined : JSON.parse(text);
}

/** An encryption keyring (`id:base64key,…`, current key first), as LARDER_ENCRYPTION_KEYS. */
export class Keyring {
  #ring;
  constructor(spec) {
    if (typeof spec !== "string") throw new ConfigError("a keyring is a string `id:base64key,…`");
    this.#ring = call(() => new wasm.Keyring(spec));
  }
  /** Seals bytes for a Redis key with the current key (AES-256-GCM, the key as associated data). */
  seal(redisKey, plaintext) {
    return call(() => this.#ring.seal(String(redisKey), bytesOf(plaintext)));
  }
  /** The plaintext of a sealed value, or `undefined` when it does not open under this key. */
  open(redisKey, sealed) {
    return call(() => this.#ring.open(String(redisKey), bytesOf(sealed)));
  }
}

function bytesOf(v) {
  if (v instanceof Uint8Array) return v;
  if (typeof v === "string") return new TextEncoder().encode(v);
  throw new InvalidInputError("expected a Uint8Array or a string");
}

// ---------------------------------------------------------------------------------------
// HTTP: the Upstash REST dialect over fetch

function poster(fetchImpl) {
  return async (url, headers, body, timeoutMs) => {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    try {
      const res = await fetchImpl(url, { method: "POST", headers, body, signal: controller.signal });
      const bytes = new Uint8Array(await res.arrayBuffer());
      return { status: res.status, syncToken: res.headers.get("upstash-sync-token") ?? undefined, body: bytes };
    } catch (e) {
      if (controller.signal.aborted) {
        const t = new Error(`no response from ${url} within ${timeoutMs} ms`);
        t.name = "TimeoutError";
        throw t;
      }
      throw e;
    } finally {
      clearTimeout(timer);
    }
  };
}

// ---------------------------------------------------------------------------------------
// The cache

// Unknown or misspelt controls are refused by the wasm side (as are unknown options).
function controlJson(options) {
  options ??= {};
  if (typeof options !== "object" || Array.isArray(options)) throw new InvalidInputError("options must be an object");
  return toJson(options);
}

function requestJson(request) {
  if (request === null || typeof request !== "object" || Array.isArray(request)) {
    throw new InvalidInputError("a request is a JSON object with a `model`, as sent to the provider");
  }
  return toJson(request);
}

function responseJson(response) {
  if (typeof response === "string") response = { text: response };
  if (response === null || typeof response !== "object" || typeof response.text !== "string") {
    throw new InvalidInputError("a response is a string or {text, model?, usage?, metadata?}");
  }
  const { text, model, usage, metadata } = response;
  return toJson({
    text,
    model: model ?? "",
    usage: usage ? { prompt_tokens: usage.promptTokens ?? 0, completion_tokens: usage.completionTokens ?? 0 } : undefined,
    metadata: metadata ?? {},
  });
}

function answerOf(text) {
  const a = fromJson(text);
  return {
    status: a.status,
    text: a.text,
    model: a.model,
    usage: a.usage ? { promptTokens: a.usage.prompt_tokens, completionTokens: a.usage.completion_tokens } : undefined,
    metadata: a.metadata ?? {},
    storedAtMs: a.storedAtMs ?? undefined,
  };
}

/** A reader `{next(): Promise<chunk | undefined>}` over what `open` returned. */
async function readerOf(source) {
  if (typeof Response !== "undefined" && source instanceof Response) {
    if (!source.ok) {
      const body = await source.text().catch(() => "");
      throw new Error(`the upstream answered ${source.status}: ${body.slice(0, 200)}`);
    }
    source = source.body;
  }
  if (source && typeof source.getReader === "function") {
    const reader = source.getReader();
    return {
      async next() {
        const { value, done } = await reader.read();
        return done ? undefined : value;
      },
    };
  }
  const iterator = source?.[Symbol.asyncIterator]?.() ?? source?.[Symbol.iterator]?.();
  if (!iterator) throw new InvalidInputError("open() must return a Response, a ReadableStream or an (async) iterable of chunks");
  return {
    async next() {
      const { value, done } = await iterator.next();
      return done ? undefined : value;
    },
  };
}

/**
 * A streamed answer: `status` (`HIT`, `MISS`, `COALESCED`, `STALE`) and its events, read with
 * `for await`. Each event is `{event?, id?, data, sse}` (`sse`: its wire form, to pass on).
 */
export class CachedStream {
  #inner;
  constructor(inner) {
    this.#inner = inner;
    this.status = inner.status;
    this.storedAtMs = inner.storedAtMs;
  }
  async *[Symbol.asyncIterator]() {
    try {
      for (;;) {
        const text = await wait(this.#inner.next());
        if (text === undefined) return;
        yield JSON.parse(text);
      }
    } finally {
      this.#inner.close();
    }
  }
  /** The events' wire form, for a `Response` body (`text/event-stream`). */
  toReadableStream() {
    const it = this[Symbol.asyncIterator]();
    const encoder = new TextEncoder();
    return new ReadableStream({
      async pull(controller) {
        const { value, done } = await it.next();
        if (done) controller.close();
        else controller.enqueue(encoder.encode(value.sse));
      },
      async cancel() {
        await it.return?.();
      },
    });
  }
  /** Stops reading (the upstream goes on for other readers). */
  close() {
    this.#inner.close();
  }
}


/**
 * larder's response cache: over Redis through the Upstash REST dialect (Upstash, or
 * `larder gateway` in front of any Redis) when `url` is given, else in this instance's
 * memory (an isolate's, in a Worker).
 */
/** How `fromEnv` hands its cache to the constructor. */
const BUILT = Symbol("larder.built");

function checked(options) {
  if (options === null || typeof options !== "object") throw new ConfigError("options must be an object");
  // Unknown options are refused by the wasm side.
  const { fetch: fetchImpl = globalThis.fetch, ...rest } = options;
  if (typeof fetchImpl !== "function") throw new ConfigError("no fetch: pass options.fetch");
  return [toJson(rest), poster(fetchImpl)];
}

export class Larder {
  #cache;
  constructor(options = {}) {
    if (options?.[BUILT]) {
      this.#cache = options[BUILT];
      return;
    }
    const [json, post] = checked(options);
    this.#cache = call(() => new wasm.Cache(json, post));
  }

  /**
   * A cache configured like @upstash/redis's `Redis.fromEnv()` and larder's other runtimes:
   * UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN (without them: memory),
   * LARDER_REST_BASE64_ARGS (`1` for a larder gateway), LARDER_PREFIX,
   * LARDER_ENCRYPTION_KEYS and LARDER_HASH_SECRET; `options` win over them. `env` is a
   * Worker's bindings, or `process.env` by default.
   */
  static fromEnv(env = globalThis.process?.env ?? {}, options = {}) {
    if (env === null || typeof env !== "object") throw new ConfigError("env must be an object of variables");
    const [json, post] = checked(options);
    return new Larder({ [BUILT]: call(() => wasm.Cache.fromEnv(env, json, post)) });
  }

  /** `"redis"` or `"memory"`. */
  get backend() {
    return this.#cache.isRedis ? "redis" : "memory";
  }

  /** HTTP requests sent to Redis so far (Workers count them as subrequests). */
  get redisRequests() {
    return this.#cache.redisRequests();
  }

  /** The Redis key of a request's answer. */
  key(request, options) {
    return call(() => this.#cache.key(requestJson(request), controlJson(options)));
  }

  /** A fresh answer, or `undefined`. */
  async get(request, options) {
    const text = await wait(call(() => this.#cache.get(requestJson(request), controlJson(options))));
    return text === undefined ? undefined : answerOf(text);
  }

  /** Stores an answer; resolves to its key. */
  async put(request, response, options) {
    return wait(call(() => this.#cache.put(requestJson(request), controlJson(options), responseJson(response))));
  }

  /** Deletes a request's answer; resolves to whether there was one. */
  async delete(request, options) {
    return wait(call(() => this.#cache.delete(requestJson(request), controlJson(options))));
  }

  /**
   * The answer from the cache (`HIT`), or from `compute()` (`MISS`), stored. Concurrent
   * identical calls make one computation (`COALESCED`), across isolates and processes
   * through the lease in Redis. When `compute` fails and an answer is inside the stale
   * window, that answer is served (`STALE`); otherwise `compute`'s error is thrown as is.
   *
   * `compute` returns the response: a string or `{text, model?, usage?: {promptTokens,
   * completionTokens}, metadata?}`.
   */
  async getOrCompute(request, compute, options) {
    if (typeof compute !== "function") throw new InvalidInputError("getOrCompute needs a compute function");
    const text = await wait(
      call(() =>
        this.#cache.getOrCompute(requestJson(request), controlJson(options), async () => responseJson(await compute())),
      ),
    );
    return answerOf(text);
  }

  /**
   * A streamed answer: a recording replayed (`HIT`, `STALE`), another caller's stream in
   * flight (`COALESCED`), or `open()`'s stream (`MISS`) passed on as it arrives and stored
   * once it ended well. `open` returns a fetch `Response`, a `ReadableStream` or an (async)
   * iterable of server-sent-event chunks (`Uint8Array` or string) in the OpenAI, Anthropic
   * or AI SDK format.
   */
  async stream(request, open, options) {
    if (typeof open !== "function") throw new InvalidInputError("stream needs an open function");
    const inner = await wait(
      call(() => this.#cache.stream(requestJson(request), controlJson(options), async () => readerOf(await open()))),
    );
    return new CachedStream(inner);
  }

  /** Makes a namespace's answers unreachable at once (one write); resolves to its new generation. */
  async invalidateNamespace(namespace) {
    return wait(call(() => this.#cache.invalidateNamespace(String(namespace))));
  }

  /** Makes the answers stored with a tag unreachable. */
  async invalidateTag(tag) {
    return wait(call(() => this.#cache.invalidateTag(String(tag))));
  }

  /** Hits, misses, tokens and dollars saved, per model and in `total`, from every instance sharing the prefix. */
  async stats() {
    const report = JSON.parse(await wait(this.#cache.stats()));
    const camel = (o) =>
      Object.fromEntries(Object.entries(o).map(([k, v]) => [k.replace(/_([a-z])/g, (_m, c) => c.toUpperCase()), v]));
    return {
      models: Object.fromEntries(Object.entries(report.models).map(([m, c]) => [m, camel(c)])),
      total: camel(report.total),
      stats: report.stats,
    };
  }

  /** Sends pending counters to Redis (in a Worker: `ctx.waitUntil(cache.flush())`). */
  async flush() {
    return wait(this.#cache.flush());
  }

  /** The envelope under a user key (`{prefix}:cache:{key}`; a request hash), or `undefined`. */
  async getEnvelope(key) {
    const text = await wait(call(() => this.#cache.getEnvelope(String(key))));
    return text === undefined ? undefined : JSON.parse(text);
  }

  /** Stores an envelope under a user key, with an optional TTL. */
  async setEnvelope(key, envelope, { ttlMs } = {}) {
    return wait(call(() => this.#cache.setEnvelope(String(key), toJson(envelope), ttlMs)));
  }
}
