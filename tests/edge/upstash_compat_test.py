"""The official upstash-redis Python client (PyPI) against `larder gateway`: every result is
asserted. Run by native/tests/gateway/upstash.rs with the venv of scripts/install-edge-tools.sh,
which starts a redis-server and the gateway and sets:
  UPSTASH_REDIS_REST_URL, UPSTASH_REDIS_REST_TOKEN  the gateway and its full token
  LARDER_READONLY_TOKEN                             its read-only token
"""

import os
import unittest

from upstash_redis import Redis
from upstash_redis.errors import UpstashError

URL = os.environ["UPSTASH_REDIS_REST_URL"]
TOKEN = os.environ["UPSTASH_REDIS_REST_TOKEN"]
RUN = f"py-{os.getpid()}"


def k(name: str) -> str:
    return f"{RUN}:{name}"


class UpstashPythonClient(unittest.TestCase):
    def setUp(self) -> None:
        self.redis = Redis(url=URL, token=TOKEN)

    def test_strings_numbers_and_nil(self) -> None:
        r = self.redis
        self.assertTrue(r.set(k("s"), "héllo ✓"))
        self.assertEqual(r.get(k("s")), "héllo ✓")
        self.assertIsNone(r.get(k("missing")))
        self.assertEqual(r.incr(k("n")), 1)
        self.assertEqual(r.incrby(k("n"), 41), 42)
        self.assertEqual(r.mget(k("s"), k("missing")), ["héllo ✓", None])
        self.assertEqual(r.strlen(k("s")), len("héllo ✓".encode()))

    def test_keys_ttl_and_types(self) -> None:
        r = self.redis
        r.set(k("t"), "v", ex=100)
        self.assertTrue(0 < r.ttl(k("t")) <= 100)
        self.assertEqual(r.exists(k("t"), k("nope")), 1)
        self.assertEqual(r.type(k("t")), "string")
        self.assertEqual(r.delete(k("t")), 1)

    def test_collections(self) -> None:
        r = self.redis
        self.assertEqual(r.rpush(k("l"), "a", "b", "c"), 3)
        self.assertEqual(r.lrange(k("l"), 0, -1), ["a", "b", "c"])
        r.hset(k("h"), values={"f": "v", "g": "w"})
        self.assertEqual(r.hgetall(k("h")), {"f": "v", "g": "w"})
        r.sadd(k("st"), "x", "y")
        self.assertEqual(sorted(r.smembers(k("st"))), ["x", "y"])
        r.zadd(k("z"), {"a": 1, "b": 2})
        self.assertEqual(r.zrange(k("z"), 0, -1, withscores=True), [("a", 1.0), ("b", 2.0)])

    def test_pipeline_transaction_and_scripts(self) -> None:
        r = self.redis
        p = r.pipeline()
        p.set(k("p"), "1")
        p.incr(k("p"))
        p.get(k("p"))
        self.assertEqual(p.exec(), [True, 2, "2"])
        tx = r.multi()
        tx.set(k("tx"), "a")
        tx.get(k("tx"))
        self.assertEqual(tx.exec(), [True, "a"])
        self.assertEqual(r.eval("return ARGV[1]", [], ["echo"]), "echo")
        sha = r.script_load("return KEYS[1]")
        self.assertEqual(r.evalsha(sha, [k("x")], []), k("x"))

    def test_redis_errors_keep_their_text(self) -> None:
        r = self.redis
        r.set(k("str"), "x")
        with self.assertRaisesRegex(UpstashError, "WRONGTYPE"):
            r.lpush(k("str"), "y")
        with self.assertRaisesRegex(UpstashError, "NOPERM"):
            r.flushall()

    def test_read_your_writes_token_moves_after_writes(self) -> None:
        r = self.redis
        r.get(k("ryw"))
        before = r._sync_token
        self.assertTrue(before, "every answer carries a token")
        r.set(k("ryw"), "1")
        after = r._sync_token
        self.assertNotEqual(after, before, "a write moves it")
        self.assertEqual(r.get(k("ryw")), "1")
        self.assertEqual(r._sync_token, after, "a read keeps it")

    def test_read_only_token_reads_and_is_refused_writes(self) -> None:
        self.redis.set(k("ro"), "visible")
        ro = Redis(url=URL, token=os.environ["LARDER_READONLY_TOKEN"])
        self.assertEqual(ro.get(k("ro")), "visible")
        with self.assertRaisesRegex(UpstashError, "NOPERM"):
            ro.set(k("ro"), "changed")
        with self.assertRaisesRegex(UpstashError, "NOPERM"):
            ro.eval("return 1", [], [])
        self.assertEqual(self.redis.get(k("ro")), "visible")

    def test_wrong_token_is_unauthorized(self) -> None:
        wrong = Redis(url=URL, token="wrong-token-0123456789abcdef")
        with self.assertRaises(Exception):
            wrong.get(k("x"))


if __name__ == "__main__":
    unittest.main()
