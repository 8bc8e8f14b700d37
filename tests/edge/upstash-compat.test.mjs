// The official @upstash/redis client (auto-pipelining on, base64 responses on) against
// `larder gateway`: every result is asserted. Run by scripts/edge-compat.sh, which starts a
// redis-server and the gateway and sets:
//   UPSTASH_REDIS_REST_URL, UPSTASH_REDIS_REST_TOKEN  the gateway and its full token
//   LARDER_READONLY_TOKEN                             its read-only token
import { test } from "node:test";
import assert from "node:assert/strict";
import { Redis } from "@upstash/redis";

const url = process.env.UPSTASH_REDIS_REST_URL;
const token = process.env.UPSTASH_REDIS_REST_TOKEN;
assert.ok(url && token, "UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN must be set");

const opts = { url, token, enableAutoPipelining: true, responseEncoding: "base64", retry: false };
const redis = new Redis(opts);
const run = `compat-${process.pid}-${Date.now()}`;
const k = (name) => `${run}:${name}`;

// The gateway's successful requests on `endpoint`, from its Prometheus `/metrics` (0 before
// the first). In a process with several gateways, LARDER_GATEWAY_NAME picks this one's series.
async function metric(endpoint) {
  const text = await (await fetch(`${url.replace(/\/$/, "")}/metrics`)).text();
  const want = [`endpoint="${endpoint}"`, `outcome="ok"`];
  if (process.env.LARDER_GATEWAY_NAME) want.push(`gateway="${process.env.LARDER_GATEWAY_NAME}"`);
  return text
    .split("\n")
    .filter((l) => l.startsWith("larder_gateway_requests_total{"))
    .filter((l) => {
      const labels = l.slice(l.indexOf("{") + 1, l.indexOf("}")).split(",");
      return want.every((w) => labels.includes(w));
    })
    .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
}

test("strings: SET/GET/GETDEL/APPEND/STRLEN/MSET/MGET/SETNX, nil", async () => {
  assert.equal(await redis.set(k("s"), "hello"), "OK");
  assert.equal(await redis.get(k("s")), "hello");
  assert.equal(await redis.append(k("s"), " world"), 11);
  assert.equal(await redis.strlen(k("s")), 11);
  assert.equal(await redis.getdel(k("s")), "hello world");
  assert.equal(await redis.get(k("s")), null);
  assert.equal(await redis.mset({ [k("m1")]: "a", [k("m2")]: "b" }), "OK");
  assert.deepEqual(await redis.mget(k("m1"), k("missing"), k("m2")), ["a", null, "b"]);
  assert.equal(await redis.setnx(k("m1"), "z"), 0);
  assert.equal(await redis.set(k("nx"), "v", { nx: true, px: 60000 }), "OK");
  assert.equal(await redis.set(k("nx"), "w", { nx: true }), null);
});

test("binary-ish and unicode values survive base64", async () => {
  const values = ["ключ 键 🔑", "tab\tnew\nline", "nul\u0000byte", "quote\"back\\slash", "", " "];
  for (const [i, v] of values.entries()) {
    await redis.set(k(`u${i}`), v);
  }
  for (const [i, v] of values.entries()) {
    assert.equal(await redis.get(k(`u${i}`)), v, JSON.stringify(v));
  }
  // A value that looks like base64 must come back as itself, not decoded twice.
  await redis.set(k("b64"), "T0s=");
  assert.equal(await redis.get(k("b64")), "T0s=");
});

test("numbers: INCR/INCRBY/DECR/INCRBYFLOAT and automatic (de)serialization", async () => {
  assert.equal(await redis.incr(k("n")), 1);
  assert.equal(await redis.incrby(k("n"), 41), 42);
  assert.equal(await redis.decr(k("n")), 41);
  assert.equal(await redis.incrbyfloat(k("f"), 1.5), 1.5);
  await redis.set(k("num"), 7);
  assert.equal(await redis.get(k("num")), 7);
  await redis.set(k("obj"), { model: "gpt", temperature: 0.7, tags: ["a"] });
  assert.deepEqual(await redis.get(k("obj")), { model: "gpt", temperature: 0.7, tags: ["a"] });
});

test("keys: EXISTS/DEL/EXPIRE/TTL/PTTL/PERSIST/TYPE", async () => {
  await redis.set(k("e"), "v");
  assert.equal(await redis.exists(k("e"), k("nope")), 1);
  assert.equal(await redis.expire(k("e"), 100), 1);
  const ttl = await redis.ttl(k("e"));
  assert.ok(ttl > 90 && ttl <= 100, `ttl ${ttl}`);
  const pttl = await redis.pttl(k("e"));
  assert.ok(pttl > 90000 && pttl <= 100000, `pttl ${pttl}`);
  assert.equal(await redis.persist(k("e")), 1);
  assert.equal(await redis.ttl(k("e")), -1);
  assert.equal(await redis.type(k("e")), "string");
  assert.equal(await redis.del(k("e"), k("nope")), 1);
  assert.equal(await redis.ttl(k("e")), -2);
});

test("arrays: lists, sets, hashes, sorted sets", async () => {
  assert.equal(await redis.rpush(k("l"), "a", "b", "c"), 3);
  assert.deepEqual(await redis.lrange(k("l"), 0, -1), ["a", "b", "c"]);
  assert.equal(await redis.lpop(k("l")), "a");
  assert.equal(await redis.sadd(k("set"), "x", "y"), 2);
  assert.deepEqual((await redis.smembers(k("set"))).sort(), ["x", "y"]);
  assert.equal(await redis.hset(k("h"), { f1: "v1", f2: "v2" }), 2);
  assert.equal(await redis.hget(k("h"), "f1"), "v1");
  assert.deepEqual(await redis.hgetall(k("h")), { f1: "v1", f2: "v2" });
  assert.equal(await redis.zadd(k("z"), { score: 2, member: "two" }, { score: 1, member: "one" }), 2);
  assert.deepEqual(await redis.zrange(k("z"), 0, -1, { withScores: true }), ["one", 1, "two", 2]);
});

test("SCAN walks every matching key", async () => {
  for (let i = 0; i < 30; i++) await redis.set(k(`scan:${i}`), i);
  const seen = new Set();
  let cursor = "0";
  do {
    const [next, keys] = await redis.scan(cursor, { match: k("scan:*"), count: 7 });
    keys.forEach((key) => seen.add(key));
    cursor = String(next);
  } while (cursor !== "0");
  assert.equal(seen.size, 30);
});

test("EVAL, EVALSHA and SCRIPT LOAD (nested replies decoded at every depth)", async () => {
  const nested = await redis.eval("return {KEYS[1], {ARGV[1], 7, {'deep'}}}", [k("ev")], ["arg"]);
  assert.deepEqual(nested, [k("ev"), ["arg", 7, ["deep"]]]);
  const sha = await redis.scriptLoad("return ARGV[1]");
  assert.match(sha, /^[0-9a-f]{40}$/);
  assert.equal(await redis.evalsha(sha, [], ["hi"]), "hi");
  assert.deepEqual(await redis.scriptExists(sha), [1]);
});

test("explicit pipeline and MULTI/EXEC transaction", async () => {
  const p = redis.pipeline();
  p.set(k("p"), "1");
  p.incr(k("p"));
  p.get(k("p"));
  assert.deepEqual(await p.exec(), ["OK", 2, 2]);
  const tx = redis.multi();
  tx.incr(k("p"));
  tx.get(k("p"));
  assert.deepEqual(await tx.exec(), [3, 3]);
});

test("auto-pipelining batches concurrent commands into /pipeline", async () => {
  await redis.set(k("ap1"), "x");
  const before = await metric("pipeline");
  // Concurrent commands are unordered with respect to each other (as with Upstash): each
  // touches its own key.
  const results = await Promise.all([
    redis.set(k("ap0"), "y"),
    redis.incr(k("ap2")),
    redis.get(k("ap1")),
    redis.echo("hi"),
    redis.ping(),
    redis.dbsize(),
  ]);
  assert.deepEqual(results.slice(0, 5), ["OK", 1, "x", "hi", "PONG"]);
  assert.ok(Number.isInteger(results[5]) && results[5] > 0);
  assert.ok((await metric("pipeline")) > before, "requests went to /pipeline");
});

test("a Redis error comes back with its text unchanged", async () => {
  await redis.set(k("str"), "not a number");
  await assert.rejects(redis.incr(k("str")), (e) => {
    assert.match(e.message, /ERR value is not an integer or out of range/);
    return true;
  });
  await redis.set(k("str2"), "x");
  await assert.rejects(redis.lpush(k("str2"), "y"), /WRONGTYPE Operation against a key holding the wrong kind of value/);
  // The client keeps working after errors.
  assert.equal(await redis.get(k("str2")), "x");
});

test("denied commands and read-only tokens are refused", async () => {
  await assert.rejects(redis.flushall(), /NOPERM/);
  const ro = new Redis({ ...opts, token: process.env.LARDER_READONLY_TOKEN });
  await redis.set(k("ro"), "visible");
  assert.equal(await ro.get(k("ro")), "visible");
  await assert.rejects(ro.set(k("ro"), "changed"), /NOPERM/);
  await assert.rejects(ro.scan(0), /NOPERM/);
  assert.equal(await redis.get(k("ro")), "visible");
  const wrong = new Redis({ ...opts, token: "wrong-token-0123456789abcdef" });
  await assert.rejects(wrong.get(k("ro")), /Unauthorized/);
});

test("Redis.fromEnv and a trailing slash in the URL", async () => {
  const env = Redis.fromEnv({ enableAutoPipelining: true });
  assert.equal(await env.echo("from env"), "from env");
  const slash = new Redis({ ...opts, url: `${url}/` });
  assert.equal(await slash.ping(), "PONG");
});

test("read-your-writes: the client's sync token moves after every write, reads see them", async () => {
  const client = new Redis({ ...opts, enableAutoPipelining: false });
  await client.get(k("ryw"));
  const before = client.readYourWritesSyncToken;
  assert.ok(before, "every answer carries a token");
  await client.set(k("ryw"), "1");
  const afterSet = client.readYourWritesSyncToken;
  assert.notEqual(afterSet, before, "a write moves it");
  assert.equal(await client.get(k("ryw")), 1);
  assert.equal(client.readYourWritesSyncToken, afterSet, "a read keeps it");
  const p = client.pipeline();
  p.incr(k("ryw"));
  p.get(k("ryw"));
  assert.deepEqual(await p.exec(), [2, 2]);
  assert.notEqual(client.readYourWritesSyncToken, afterSet, "a pipeline with a write moves it");
  const tx = client.multi();
  tx.set(k("ryw"), "3");
  await tx.exec();
  const afterTx = client.readYourWritesSyncToken;
  await client.eval("return redis.call('SET', KEYS[1], '4')", [k("ryw")], []);
  assert.notEqual(client.readYourWritesSyncToken, afterTx, "a script moves it");
  assert.equal(await client.get(k("ryw")), 4);
});

test("subscribe and psubscribe: the client's server-sent event streams, messages JSON-decoded", async () => {
  const client = new Redis({ ...opts, enableAutoPipelining: false });
  const events = [];
  const waiters = [];
  const seen = (pred) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out; saw ${JSON.stringify(events)}`)), 5000);
      const check = () => {
        const hit = events.find(pred);
        if (hit) {
          clearTimeout(timer);
          resolve(hit);
          return true;
        }
        return false;
      };
      if (!check()) waiters.push(check);
    });
  const push = (e) => {
    events.push(e);
    for (let i = waiters.length - 1; i >= 0; i--) if (waiters[i]()) waiters.splice(i, 1);
  };
  const chat = client.subscribe([k("chat")]);
  chat.on("subscribe", (count) => push({ kind: "subscribe", count }));
  chat.on("message", (m) => push({ kind: "message", ...m }));
  chat.on("error", (e) => push({ kind: "error", error: String(e) }));
  const users = client.psubscribe([k("user:*")]);
  users.on("pmessage", (m) => push({ kind: "pmessage", ...m }));
  users.on("error", (e) => push({ kind: "error", error: String(e) }));
  await seen((e) => e.kind === "subscribe");
  // The pattern's stream is open once the gateway answers its first frame; publish until
  // both subscribers have heard (a publish before a subscription is in place is lost).
  const deadline = Date.now() + 5000;
  while ((await redis.publish(k("user:42"), JSON.stringify({ id: 1 }))) < 1) {
    assert.ok(Date.now() < deadline, "the pattern subscription is in place");
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(await redis.publish(k("chat"), JSON.stringify({ user: "a", text: "hi, there" })), 1);
  const message = await seen((e) => e.kind === "message");
  assert.deepEqual(
    { channel: message.channel, message: message.message },
    { channel: k("chat"), message: { user: "a", text: "hi, there" } },
  );
  const pmessage = await seen((e) => e.kind === "pmessage");
  assert.deepEqual(
    { pattern: pmessage.pattern, channel: pmessage.channel, message: pmessage.message },
    { pattern: k("user:*"), channel: k("user:42"), message: { id: 1 } },
  );
  assert.equal(events.filter((e) => e.kind === "error").length, 0, JSON.stringify(events));
  await chat.unsubscribe();
  await users.unsubscribe();
});
