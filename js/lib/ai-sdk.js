// A language-model middleware for the Vercel AI SDK (`wrapLanguageModel`) that answers
// `generate` and `stream` calls from a larder cache. The stream parts are recorded by
// larder-core (format "ai-sdk": complete at `finish`, never stored after an `error` part)
// and replayed part for part.
import { fromJson, toJson } from "./larder.js";

/** The event name of every recorded part (larder-core's `AI_SDK_EVENT`). */
const EVENT = "ai-sdk";

// Call options that are not part of the key: the abort signal (not data) and the HTTP
// headers (credentials must never reach a key; they do not change the answer).
const NOT_KEYED = new Set(["abortSignal", "headers"]);

function requestOf(kind, model, params) {
  const body = {};
  for (const [name, value] of Object.entries(params)) {
    if (!NOT_KEYED.has(name) && value !== undefined) body[name] = value;
  }
  body.model = `${model.provider}:${model.modelId}`;
  body["ai-sdk"] = kind;
  return body;
}

// Dates do not survive JSON: the SDK's `response.timestamp` and the `response-metadata`
// part's `timestamp` come back as `Date`s (the AI SDK's caching guide does the same).
function reviveResult(result) {
  if (result.response?.timestamp != null) result.response.timestamp = new Date(result.response.timestamp);
  return result;
}
function revivePart(part) {
  if (part.type === "response-metadata" && part.timestamp != null) part.timestamp = new Date(part.timestamp);
  return part;
}

function textOf(content) {
  return (content ?? [])
    .filter((c) => c.type === "text")
    .map((c) => c.text)
    .join("");
}

function tokens(v) {
  return typeof v === "number" ? v : (v?.total ?? 0);
}

/** Parts as server-sent events, one `event: ai-sdk` per part. */
async function* eventsOf(stream) {
  const reader = stream.getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      yield `event: ${EVENT}\ndata: ${toJson(value)}\n\n`;
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * The middleware. `cache` is a `Larder`; `ttlMs`, `namespace` and `tags` apply to every
 * answer it stores. A call's key is its model (provider and id), its kind (generate or
 * stream) and its call options except `abortSignal` and `headers`.
 *
 * - generate: a hit returns the stored result; a miss calls the model once for every
 *   concurrent identical call (in this isolate, and across isolates through Redis).
 * - stream: a hit replays the stored parts; a miss passes the model's parts on as they
 *   arrive and stores them once the stream ended with `finish` and no `error` part.
 *
 * A cache failure never fails the call: the model is called instead.
 */
export function larderMiddleware({ cache, ttlMs, namespace, tags } = {}) {
  if (!cache || typeof cache.getOrCompute !== "function") {
    throw new TypeError("larderMiddleware needs { cache: a Larder }");
  }
  const options = { ttlMs, namespace, tags };
  return {
    specificationVersion: "v4",

    async wrapGenerate({ doGenerate, params, model }) {
      let fresh;
      const answer = await cache.getOrCompute(
        requestOf("generate", model, params),
        async () => {
          fresh = await doGenerate();
          return {
            text: textOf(fresh.content),
            model: fresh.response?.modelId ?? model.modelId,
            usage: { promptTokens: tokens(fresh.usage?.inputTokens), completionTokens: tokens(fresh.usage?.outputTokens) },
            metadata: { "ai-sdk": JSON.parse(toJson(fresh)) },
          };
        },
        options,
      );
      if (fresh !== undefined && answer.status === "MISS") return fresh;
      const stored = answer.metadata?.["ai-sdk"];
      // An entry without the SDK's result (written by another program): call the model.
      if (stored === undefined) return fresh ?? doGenerate();
      return reviveResult(fromJson(JSON.stringify(stored)));
    },

    async wrapStream({ doStream, params, model }) {
      let rest;
      const streamed = await cache.stream(
        requestOf("stream", model, params),
        async () => {
          const { stream, ...others } = await doStream();
          rest = others;
          return eventsOf(stream);
        },
        options,
      );
      const events = streamed[Symbol.asyncIterator]();
      const stream = new ReadableStream({
        async pull(controller) {
          try {
            const { value, done } = await events.next();
            if (done) controller.close();
            else if (value.event === EVENT) controller.enqueue(revivePart(fromJson(value.data)));
          } catch (e) {
            controller.error(e);
          }
        },
        async cancel() {
          await events.return?.();
        },
      });
      return { stream, ...(rest ?? {}) };
    },
  };
}
