// Types of the `larder` package (lib/larder.js).

/** Base class of every error larder throws (a computation's own errors are rethrown as they are). */
export declare class LarderError extends Error {}
/** Bad options or environment: a missing token, a malformed key or secret, a bad prefix. */
export declare class ConfigError extends LarderError {}
/** A bad argument: a request that is not a JSON object with a model, bad controls, bad bytes. */
export declare class InvalidInputError extends LarderError {}
/** Redis could not be reached or answered badly (only when the cache is not fail-open, and for admin calls). */
export declare class CacheError extends LarderError {}
/** A streamed answer that cannot go on: cut, its leader gone, or too slow a reader. */
export declare class StreamError extends LarderError {}

/** Any JSON value (`Uint8Array`s travel as base64). */
export type Json = null | boolean | number | string | Uint8Array | Json[] | { [name: string]: Json | undefined };

/** The canonical JSON of a value (docs/KEY_FORMAT.md §3). */
export declare function canonicalJson(value: Json): string;
/** SHA-256 (or, with `secret`, HMAC-SHA-256) of the canonical JSON: 64 hex digits. */
export declare function requestHash(request: Json, options?: { secret?: string }): string;
/** {@link requestHash} of a JSON text, exact beyond ±2^53. */
export declare function requestHashOfJson(text: string, options?: { secret?: string }): string;

/** A stored answer, as every larder runtime reads and writes it (docs/KEY_FORMAT.md §7). */
export interface Envelope {
  v?: number;
  response: string;
  model?: string;
  /** Unix seconds. */
  timestamp?: number;
  metadata?: Record<string, Json>;
}
export declare function encodeEnvelope(envelope: Envelope): Uint8Array;
/** `undefined` for bytes that are neither an envelope nor text. */
export declare function decodeEnvelope(bytes: Uint8Array): Required<Envelope> | undefined;

/** An encryption keyring: `id:base64key,…`, the current key first (LARDER_ENCRYPTION_KEYS). */
export declare class Keyring {
  constructor(spec: string);
  seal(redisKey: string, plaintext: Uint8Array | string): Uint8Array;
  /** `undefined` when the value does not open under this keyring for this key. */
  open(redisKey: string, sealed: Uint8Array | string): Uint8Array | undefined;
}

export interface LarderOptions {
  /** The REST URL (Upstash, or `larder gateway`). Without it, answers live in this instance's memory. */
  url?: string;
  token?: string;
  /** Arguments as base64 (`true` for a larder gateway: binary-safe). */
  base64Args?: boolean;
  /** Key prefix (default `larder`). */
  prefix?: string;
  /** How long answers stay fresh (default: until evicted). */
  defaultTtlMs?: number;
  /** How long past freshness an answer may be served when the computation fails. */
  staleWindowMs?: number;
  /** The longest wait for one Redis request (default 10 s). */
  timeoutMs?: number;
  /** How long a computation's lease lives unless extended (default 10 s). */
  leaseTtlMs?: number;
  /** How long a miss waits for another isolate's computation before computing itself (default 30 s). */
  maxWaitMs?: number;
  /** How often a caller following another isolate's stream polls (default 50 ms). */
  streamPollMs?: number;
  /** The largest stream recorded (larger ones pass through unstored). */
  maxStreamBytes?: number;
  /** Encryption at rest (LARDER_ENCRYPTION_KEYS). */
  encryptionKeys?: string;
  /** Keyed request hashes (LARDER_HASH_SECRET, base64). */
  hashSecret?: string;
  /** Entries of the in-memory cache (the first cache of an instance sets it). */
  memoryEntries?: number;
  /** When true (the default), a cache failure never fails getOrCompute: the answer is computed. */
  failOpen?: boolean;
  /** The fetch used for Redis (default: the global one). */
  fetch?: typeof fetch;
}

/** Per-call controls. */
export interface CallOptions {
  ttlMs?: number;
  namespace?: string;
  tags?: string[];
  /** Do not read the cache (still stores). */
  noCache?: boolean;
  /** Do not store. */
  noStore?: boolean;
  /** Compute even when fresh (serving the fresh answer if computing fails). */
  forceRefresh?: boolean;
}

export type Status = "HIT" | "MISS" | "COALESCED" | "STALE";

export interface Usage {
  promptTokens: number;
  completionTokens: number;
}

/** What a computation returns. */
export type LlmResponse = string | { text: string; model?: string; usage?: Usage; metadata?: Record<string, Json> };

export interface Answer {
  status: Status;
  text: string;
  model: string;
  usage?: Usage;
  metadata: Record<string, Json>;
  /** When the served entry was written (unix ms); undefined for one computed by this call. */
  storedAtMs?: number;
}

/** A request: the provider's request body (a JSON object with a string `model`). */
export type LlmRequest = { model: string; [field: string]: Json | undefined };

export interface StreamEvent {
  event?: string;
  id?: string;
  data: string;
  /** The event's wire form. */
  sse: string;
}

type Chunk = Uint8Array | string;
export type StreamSource = Response | ReadableStream<Chunk> | AsyncIterable<Chunk> | Iterable<Chunk>;

export declare class CachedStream implements AsyncIterable<StreamEvent> {
  readonly status: Status;
  readonly storedAtMs: number | undefined;
  [Symbol.asyncIterator](): AsyncIterator<StreamEvent>;
  /** The events' wire form, for a `text/event-stream` response body. */
  toReadableStream(): ReadableStream<Uint8Array>;
  close(): void;
}

export declare class Larder {
  constructor(options?: LarderOptions);
  /** UPSTASH_REDIS_REST_URL/_TOKEN (else memory), LARDER_REST_BASE64_ARGS, LARDER_PREFIX, LARDER_ENCRYPTION_KEYS, LARDER_HASH_SECRET; `env` defaults to `process.env`. */
  static fromEnv(env?: Record<string, unknown>, options?: LarderOptions): Larder;
  readonly backend: "redis" | "memory";
  readonly redisRequests: number;
  key(request: LlmRequest, options?: CallOptions): string;
  get(request: LlmRequest, options?: CallOptions): Promise<Answer | undefined>;
  put(request: LlmRequest, response: LlmResponse, options?: CallOptions): Promise<string>;
  delete(request: LlmRequest, options?: CallOptions): Promise<boolean>;
  getOrCompute(request: LlmRequest, compute: () => LlmResponse | Promise<LlmResponse>, options?: CallOptions): Promise<Answer>;
  stream(request: LlmRequest, open: () => StreamSource | Promise<StreamSource>, options?: CallOptions): Promise<CachedStream>;
  invalidateNamespace(namespace: string): Promise<number>;
  invalidateTag(tag: string): Promise<void>;
  stats(): Promise<Stats>;
  flush(): Promise<void>;
  getEnvelope(key: string): Promise<Required<Envelope> | undefined>;
  setEnvelope(key: string, envelope: Envelope, options?: { ttlMs?: number }): Promise<void>;
}

export interface ModelStats {
  hits: number;
  misses: number;
  writes: number;
  promptTokensSaved: number;
  completionTokensSaved: number;
  costSavedUsd: number;
  providerCacheReadTokens: number;
  providerCacheWriteTokens: number;
}
export interface Stats {
  models: Record<string, ModelStats>;
  total: ModelStats;
  stats: { hits: number; misses: number; writes: number };
}

export declare function toJson(value: Json): string;
export declare function fromJson(text: string): Json;
