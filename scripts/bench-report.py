#!/usr/bin/env python3
"""larder's benchmark results: parsers for the tools' output, and the report.

The benchmarks (core/benches/memory.rs, native/benches/transport.rs,
native/benches/scenarios.rs, scripts/bench-gateway.sh, scripts/bench-edge.sh) append one JSON
object per line to a results file; scripts/bench.sh then runs `render` to write
BENCHMARKS.md and docs/bench.svg from it.

    bench-report.py wrk [--set k=v ...]             < wrk --latency output   → one JSON line
    bench-report.py redis-benchmark [--set k=v ...] < redis-benchmark --csv  → JSON lines
    bench-report.py meta [--set k=v ...]                                      → machine, versions
    bench-report.py render RESULTS.jsonl BENCHMARKS.md docs/bench.svg
"""

import json
import math
import os
import re
import statistics
import subprocess
import sys
from collections import OrderedDict, defaultdict


# ------------------------------------------------------------------------------------------
# Parsers.


def fields(args):
    out = OrderedDict()
    it = iter(args)
    for a in it:
        if a == "--set":
            k, _, v = next(it).partition("=")
            try:
                v = int(v)
            except ValueError:
                try:
                    v = float(v)
                except ValueError:
                    pass
            out[k] = v
    return out


def wrk_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        return None
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[m.group(2)]
    return float(m.group(1)) * scale


def parse_wrk(args):
    text = sys.stdin.read()
    rec = fields(args)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    total = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    if not (rps and p50 and p99):
        sys.stderr.write("could not parse wrk output:\n" + text)
        rec["error"] = "unparsable wrk output"
    else:
        rec["requests_per_sec"] = float(rps.group(1))
        rec["p50_ms"] = wrk_ms(p50.group(1))
        rec["p99_ms"] = wrk_ms(p99.group(1))
        rec["requests"] = int(total.group(1)) if total else None
    rec["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    if errors:
        rec["socket_errors"] = errors.group(1).strip()
    print(json.dumps(rec))


def parse_redis_benchmark(args):
    lines = [l for l in sys.stdin.read().splitlines() if l.startswith('"')]
    header = [h.strip('"') for h in lines[0].split(",")]
    for line in lines[1:]:
        row = dict(zip(header, [c.strip('"') for c in line.split(",")]))
        rec = fields(args)
        rec["test"] = row["test"]
        rec["commands_per_sec"] = float(row["rps"])
        rec["p50_ms"] = float(row["p50_latency_ms"])
        rec["p99_ms"] = float(row["p99_latency_ms"])
        print(json.dumps(rec))


def sh(cmd):
    try:
        return subprocess.run(
            cmd, shell=True, capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except Exception:  # noqa: BLE001 — a missing tool is just an empty field
        return ""


def lock_versions(path, names):
    out = {}
    try:
        text = open(path).read()
    except OSError:
        return out
    for block in text.split("[[package]]"):
        name = re.search(r'^name = "([^"]+)"', block, re.M)
        ver = re.search(r'^version = "([^"]+)"', block, re.M)
        if name and ver and name.group(1) in names:
            out.setdefault(name.group(1), []).append(ver.group(1))
    return {k: ", ".join(v) for k, v in out.items()}


def meta(args):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-")
    rec = OrderedDict(suite="meta")
    rec.update(fields(args))
    rec.update(
        cpu=cpu.strip(),
        cores=int(sh("nproc") or 0),
        kernel=sh("uname -sr"),
        memory=sh("free -h | awk '/^Mem:/ {print $2}'"),
        loadavg=sh("cat /proc/loadavg"),
        busiest=sh("ps -eo pcpu,comm --sort=-pcpu | sed -n 2,6p | awk '{print $2\" \"$1\"%\"}' | paste -sd, -"),
        compilers_running=int(sh("pgrep -c -x rustc") or 0),
        rustc=sh("rustc -V"),
        cargo=sh("cargo -V"),
        redis_server=sh("redis-server --version"),
        redis_benchmark=sh("redis-benchmark --version"),
        wrk=sh("dpkg-query -W -f '${Version}' wrk"),
        webdis=sh("dpkg-query -W -f '${Version}' webdis"),
        git=sh(f"git -C {root} rev-parse --short HEAD") + (
            " (dirty)" if sh(f"git -C {root} status --porcelain --untracked-files=no") else ""
        ),
        crates=lock_versions(
            os.path.join(root, "Cargo.lock"),
            {"lru", "moka", "quick_cache", "redis", "reqwest", "axum", "tokio", "hashbrown"},
        ),
    )
    print(json.dumps(rec))


# ------------------------------------------------------------------------------------------
# The report.


def load(path):
    recs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                recs.append(json.loads(line))
    return recs


def fmt_num(x, digits=0):
    if x is None:
        return "–"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def fmt_us(us):
    """A duration given in microseconds, in the unit that reads best."""
    if us is None:
        return "–"
    if us < 1:
        return f"{us * 1000:.0f} ns"
    if us < 1000:
        return f"{us:.1f} µs" if us < 100 else f"{us:.0f} µs"
    if us < 1e6:
        return f"{us / 1000:.2f} ms"
    return f"{us / 1e6:.2f} s"


def mark(ok):
    return "✅ met" if ok else "❌ missed"


class Report:
    def __init__(self, recs):
        self.recs = recs
        self.out = []
        self.targets = []  # (target, measured, ok)

    def p(self, s=""):
        self.out.append(s)

    def table(self, header, rows, align=None):
        self.p("| " + " | ".join(header) + " |")
        align = align or (["---"] + ["---:"] * (len(header) - 1))
        self.p("|" + "|".join(align) + "|")
        for r in rows:
            self.p("| " + " | ".join(str(c) for c in r) + " |")
        self.p()

    def of(self, suite, **kw):
        return [
            r
            for r in self.recs
            if r.get("suite") == suite and all(r.get(k) == v for k, v in kw.items())
        ]


def render_memory(R):
    thr = R.of("memory", kind="throughput")
    if not thr:
        return
    R.p("## Memory tier (larder `MemoryCache` vs `lru`, moka, quick_cache)")
    R.p()
    r0 = thr[0]
    rat = R.of("memory", kind="ratio")
    paired_alone = bool(rat) and "ci_low" in rat[0]
    key = (f"`String` keys of the shape the response cache stores (`larder:cache:` and 64 hex digits, "
           f"{r0['key_bytes']} B)" if "key_bytes" in r0 else "`String` keys")
    R.p(
        f"Million operations per second: the contenders run interleaved, round by round (the "
        f"order rotating each round), {r0.get('rounds')} rounds of {r0.get('ops_per_thread'):,} "
        f"ops per thread, threads {'pinned to CPUs' if r0.get('pinned') else 'not pinned'}; "
        f"each cell is the median round [lowest – highest]. Capacity 10 000 entries; {key}, "
        "`Bytes` values (64 B). `lru` is not thread-safe and is measured as "
        "`Mutex<LruCache>`. The last row is larder `MemoryCache` ÷ quick_cache, measured "
        + (f"in {rat[0].get('rounds')} rounds of its own, before the contenders' rounds"
           if paired_alone else "once per round")
        + (f", each in {rat[0]['paired_chunks']} alternating chunks of a quarter round (A B B A B A A B, "
           "each after an untimed warm-up, so that a slow stretch of the shared machine falls on both "
           "alike and neither pays for refilling the CPU caches after the other)"
           if rat and rat[0].get("paired_chunks") else "")
        + (f": the median round [its {rat[0].get('ci_level', 0.95) * 100:.1f} % confidence interval], and the "
           "range of the rounds. The interval lies between order statistics of the rounds (the "
           "sign-test interval, which assumes nothing about their distribution), its ends rounded "
           "outwards; a target it crosses is *not decided*."
           if paired_alone else
           ": its median [lowest – highest]; a target whose spread crosses it is *not decided*.")
    )
    R.p()
    workloads = list(OrderedDict.fromkeys(r["workload"] for r in thr))
    contenders = list(OrderedDict.fromkeys(r["contender"] for r in thr))
    ratios = R.of("memory", kind="ratio")
    for threads in sorted({r["threads"] for r in thr}):
        R.p(f"### {threads} thread{'s' if threads > 1 else ''}")
        R.p()
        val = {(r["contender"], r["workload"]): r for r in thr if r["threads"] == threads}
        rows = []
        for c in contenders:
            row = [c]
            for w in workloads:
                v = val.get((c, w))
                row.append("–" if v is None else
                           f"{v['mops']:.2f} [{v.get('low', v['mops']):.2f} – {v.get('high', v['mops']):.2f}]")
            rows.append(row)
        rrow = ["**larder ÷ quick_cache**"]
        for w in workloads:
            r = next((x for x in ratios if x["threads"] == threads and x["workload"] == w), None)
            if r is None:
                rrow.append("–")
                continue
            lo, hi = r.get("ci_low", r["low"]), r.get("ci_high", r["high"])
            verdict = "met" if lo >= 1.0 else ("not met" if hi < 1.0 else "not decided")
            # The interval's ends rounded outwards, so that a shown bound never claims more.
            shown = f"{r['median']:.2f}× [{math.floor(lo * 100) / 100:.2f} – {math.ceil(hi * 100) / 100:.2f}]"
            rounds = f" (rounds {r['low']:.2f} – {r['high']:.2f})" if "ci_low" in r else ""
            rrow.append(f"{shown} {verdict}{rounds}")
            what = ("memory tier ≥ 1.0× quick_cache (ops/s, 95 % CI)" if "ci_low" in r
                    else "memory tier ≥ 1.0× quick_cache (ops/s, spread)")
            R.targets.append((what, f"{w}, {threads} thr",
                              shown if verdict != "not decided" else f"not decided: {shown}",
                              verdict == "met", r["median"] - 1.0))
        if ratios:
            rows.append(rrow)
        R.table(["contender"] + workloads, rows)
    hr = R.of("memory", kind="hit_ratio")
    if hr:
        h = hr[0]
        R.p(
            f"### Hit ratio: {h.get('requests'):,} requests per trace over {h.get('keys'):,} keys "
            "(and one-off keys), cache-aside fills"
            + (f"; each cell the mean of {h['runs']} fresh instances (every instance has its own "
               "random hasher seed, which decides which keys share a sketch counter or a shard)"
               if h.get("runs") else "")
        )
        R.p()
        R.p(
            "*zipf S*: Zipf(S) over the keys. *loop*: a loop over 10 % more keys than fit. "
            "*scan + hot*: Zipf(0.9), with every fifth stretch of 5,000 requests a scan of "
            "one-off keys. *agent*: 30 % one-off prompts; the rest Zipf(1.0) over a hot set of "
            "2,000 prompts that moves on by 500 every 50,000 requests; a fifth of the requests "
            "repeated right away 1–5 times (retries, parallel identical calls). Capacity as a "
            "share of the keys. The target: larder ≥ max(moka, quick_cache) − 0.005."
        )
        R.p()
        names = list(OrderedDict.fromkeys(r["contender"] for r in hr))
        cells = OrderedDict()
        for r in hr:
            cells.setdefault((r.get("trace", "zipf 0.9"), r.get("capacity_pct", 10)), {})[r["contender"]] = r["hit_ratio"]
        rows = []
        for (trace, pct), by in cells.items():
            rows.append([trace, f"{pct} %"] + [f"{by[n]:.3f}" if n in by else "–" for n in names])
            mine = by.get(names[0])
            best = max((by[n] for n in names if n.startswith(("moka", "quick_cache")) and n in by), default=None)
            if mine is not None and best is not None:
                R.targets.append(("memory tier hit ratio ≥ max(moka, quick_cache) − 0.005", f"{trace}, {pct} %",
                                  f"{mine:.3f} vs {best:.3f}", mine >= best - 0.005, mine - best))
        R.table(["trace", "capacity"] + names, rows)
        # Why larder keeps a policy of its own (issue 18): how each crate fares on the same target.
        peers = [n for n in names if n.startswith(("moka", "quick_cache"))]
        if len(peers) == 2 and names:
            lines = []
            for n in [names[0]] + peers:
                gaps = [(by[n] - max(by[p] for p in peers), trace, pct)
                        for (trace, pct), by in cells.items() if n in by and all(p in by for p in peers)]
                met = sum(1 for g, _, _ in gaps if g >= -0.005)
                worst = min(gaps)
                lines.append(f"{n}: within 0.005 of the better peer in {met} of {len(gaps)} cases"
                             + (f", worst {worst[0]:+.3f} ({worst[1]}, {worst[2]} %)" if worst[0] < -0.005 else ""))
            R.p("The same target for every contender, which is why larder keeps a policy of its own "
                "(issue 18) rather than use either crate: " + "; ".join(lines) + ".")
            R.p()
    ov = R.of("memory", kind="overhead")
    if ov:
        R.p(
            f"### Heap bytes per entry beyond key and value ({ov[0].get('entries'):,} entries, "
            "counting allocator)"
        )
        R.p()
        R.table(["contender", "bytes/entry"], [[r["contender"], fmt_num(r["bytes_per_entry"])] for r in ov])
        mine = ov[0]["bytes_per_entry"]
        quick = next((r["bytes_per_entry"] for r in ov if r["contender"].startswith("quick_cache")), None)
        if quick is not None:
            R.targets.append(("memory tier bytes/entry ≤ quick_cache's + 16", "100k entries",
                              f"{mine:.0f} vs {quick:.0f}", mine <= quick + 16, quick + 16 - mine))


def render_redis(R):
    recs = R.of("redis")
    if not recs:
        return
    R.p("## Native Redis (larder over redis-rs vs raw redis-rs, same run)")
    R.p()
    R.p(
        f"{recs[0].get('secs')} s per measurement after a 200 ms warm-up; 1 KB values; servers "
        "started by the harness (standalone, and a 3-master Cluster without replicas). Clients: "
        "**raw** = redis-rs alone (one `MultiplexedConnection`, or one async `ClusterConnection`), "
        "typed commands; **transport** = larder's `RedisTransport` (`Cmd` → `Value`); **cache** "
        "= `RedisCache` over it (key prefixing, hit/miss counting, stats `INCRBY` batched into "
        "writes). p50/p99 are per operation. Each client is measured in "
        f"{recs[0].get('rounds', 1)} rounds alternating with the others, and its median round "
        "is shown. With 100 or 1000 tasks the client's CPU is the limit, and the client, Redis "
        "and the machine's other work share two cores: on this VM, rows move by tens of "
        "percent from one run to the next, so read the ratios across many rows, not one."
    )
    R.p()
    idx = defaultdict(dict)
    for r in recs:
        idx[(r["topology"], r["op"], r["tasks"])][r["client"]] = r
    for topo in OrderedDict.fromkeys(r["topology"] for r in recs):
        R.p(f"### {topo}")
        R.p()
        rows = []
        for (t, op, tasks), c in idx.items():
            if t != topo:
                continue
            raw, tr, ca = c.get("raw redis-rs"), c.get("larder transport"), c.get("larder cache")
            if not (raw and tr and ca):
                continue
            rt, rc = tr["ops_per_sec"] / raw["ops_per_sec"], ca["ops_per_sec"] / raw["ops_per_sec"]
            rows.append(
                [
                    op,
                    tasks,
                    fmt_num(raw["ops_per_sec"]),
                    fmt_num(tr["ops_per_sec"]),
                    fmt_num(ca["ops_per_sec"]),
                    f"**{rt:.2f}×**",
                    f"**{rc:.2f}×**",
                    " / ".join(fmt_us(x["p50_us"]) for x in (raw, tr, ca)),
                    " / ".join(fmt_us(x["p99_us"]) for x in (raw, tr, ca)),
                ]
            )
            R.targets.append(("RedisTransport ≥ 0.9× raw redis-rs (ops/s)", f"{topo} {op} ×{tasks}",
                              f"{rt:.2f}×", rt >= 0.9, rt))
            R.targets.append(("RedisCache ≥ 0.9× raw redis-rs (ops/s)", f"{topo} {op} ×{tasks}",
                              f"{rc:.2f}×", rc >= 0.9, rc))
            if topo == "standalone" and op == "MGET100" and tasks == 1:
                for name, x in (("transport", tr), ("cache", ca)):
                    R.targets.append(("MGET 100 keys p50 < 1 ms, standalone", f"{name}, 1 task",
                                      fmt_us(x["p50_us"]), x["p50_us"] < 1000, -x["p50_us"]))
        R.table(
            [
                "op",
                "tasks",
                "raw ops/s",
                "transport ops/s",
                "cache ops/s",
                "transport ÷ raw",
                "cache ÷ raw",
                "p50 raw / transport / cache",
                "p99 raw / transport / cache",
            ],
            rows,
            ["---", "---:", "---:", "---:", "---:", "---:", "---:", "---", "---"],
        )
    rb = R.of("redis-benchmark")
    if rb:
        R.p("### For context: `redis-benchmark` on the same standalone server")
        R.p()
        R.table(
            ["test", "clients", "pipeline (-P)", "commands/s", "p50", "p99"],
            [
                [r["test"], r.get("connections"), r.get("pipeline"), fmt_num(r["commands_per_sec"]),
                 fmt_us(r["p50_ms"] * 1000), fmt_us(r["p99_ms"] * 1000)]
                for r in rb
            ],
        )


def render_tiered(R):
    recs = R.of("tiered")
    if not recs:
        return
    R.p("## Tiered cache (L1 `MemoryCache` in front of `RedisCache` on a standalone Redis)")
    R.p()
    R.p(
        "Sequential calls from one task, 1 KB values. *L2 hit* reads keys written to Redis "
        "only (each read fills L1). *Miss + compute* is `ComputeCache::get_or_compute` with the "
        "Redis lease and an instant compute: the cache's own cost of a miss (L1 and L2 reads, "
        "`SET NX` lease, write to both tiers, scripted release)."
    )
    R.p()
    R.table(
        ["case", "calls", "p50", "p99", "max"],
        [[r["case"], fmt_num(r["n"]), fmt_us(r["p50_us"]), fmt_us(r["p99_us"]), fmt_us(r["max_us"])] for r in recs],
    )


def render_stampede(R):
    recs = [r for r in R.of("stampede") if "waiters" in r]
    if not recs:
        return
    R.p("## Stampede: 1000 callers, one missing key")
    R.p()
    R.p(
        f"The compute takes {recs[0].get('compute_ms')} ms and counts itself. *Processes* are "
        "independent `ComputeCache`s (each its own single-flight and lease waiter, like separate "
        "servers or Worker isolates) sharing one transport; *1 × 1000* is 1000 tasks in one "
        "process (coalesced in memory, one lease). *After compute end* is the time from the end "
        "of the (first) compute until each caller had the value. Waiters are woken by "
        "**polling** unless the transport supports pub/sub (column *wake-up*); polling uses the "
        "defaults (jittered backoff from 20 ms doubling to 2 s, ≤ 20 polls). HTTP goes through "
        "larder-edge's `RestTransport` (native reqwest client) to `larder gateway` in the same "
        "process, its waiters either subscribed through the gateway's `/subscribe` event stream "
        "or polling (subscriptions off, as in Workers or against Upstash). Target: 1000 "
        "independent HTTP waiters have the value within 50 ms of the compute's end (p99)."
    )
    R.p()
    rows = []
    for r in recs:
        extra = r.get("extra_compute_start_ms_after_first_end") or []
        rows.append(
            [
                r["transport"],
                f"{r['processes']} × {r['tasks_per_process']}",
                r["notify"],
                f"**{r['computes']}**" + (
                    " (extra started " + ", ".join(f"{x:+.1f} ms" for x in extra) + " vs first end)"
                    if extra else ""
                ),
                fmt_us(r["p50_us"]),
                fmt_us(r["p99_us"]),
                fmt_us(r["max_us"]),
                fmt_num(r.get("polls")),
                r.get("errors", 0),
            ]
        )
        if r["transport"].startswith("HTTP") and r["notify"] == "pub/sub" and r["processes"] >= 1000:
            R.targets.append(
                ("stampede: 1000 independent HTTP waiters within 50 ms of the compute's end (p99)",
                 f"{r['transport']}, {r['processes']} × {r['tasks_per_process']}, subscribed",
                 fmt_us(r["p99_us"]), r["p99_us"] <= 50_000, -r["p99_us"])
            )
        R.targets.append(
            ("stampede: exactly 1 compute for 1000 callers",
             f"{r['transport']}, {r['processes']} × {r['tasks_per_process']}",
             str(r["computes"]), r["computes"] == 1, -r["computes"])
        )
    R.table(
        ["transport", "processes × tasks", "wake-up", "computes", "after compute end p50",
         "p99", "all (max)", "polls", "errors"],
        rows,
        ["---", "---:", "---", "---", "---:", "---:", "---:", "---:", "---:"],
    )


def render_streams(R):
    follow = R.of("stream_follow")
    replay = R.of("stream_replay")
    if not follow and not replay:
        return
    R.p("## Streams: following a stream in flight, and replay")
    R.p()
    if follow:
        R.p(
            f"A leader asks for a streamed answer (an OpenAI chat stream of {follow[0]['events']} "
            "events: the model thinks 50 ms, then sends one event per ms); an identical request "
            "follows 5 ms later. *Lag* is when the follower got its first (last) event minus "
            f"when the leader got it, over {follow[0]['runs']} runs. *In-process*: one "
            "`ResponseCache` (the follower attaches to the leader's buffer). *Cross-process*: a "
            "second `ResponseCache` on its own connection reads the Redis Stream the leader "
            "publishes, woken by pub/sub: natively, or over HTTP through `larder gateway`'s "
            "`/subscribe` event stream; or polling every 50 ms (HTTP with subscriptions off, the "
            "Workers path)."
        )
        R.p()
        rows = []
        targets = {"in-process": 1.0, "cross-process, native": 10.0, "cross-process, HTTP": 50.0}
        for r in follow:
            target = next((v for k, v in targets.items() if r["mode"].startswith(k)), None)
            rows.append([
                r["mode"],
                ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items())),
                f"{r['leader_first_ms_p50']:.1f} ms",
                f"{r['first_lag_ms_p50']:.2f} ms", f"{r['first_lag_ms_p99']:.2f} ms",
                f"{r['last_lag_ms_p50']:.2f} ms", f"{r['last_lag_ms_p99']:.2f} ms",
                f"≤ {target:g} ms" if target is not None else "–",
            ])
            if target is not None:
                R.targets.append((
                    "streams: a follower's first event ≤ the leader's + 1 ms in-process, "
                    "+ 10 ms cross-process native, + one poll interval (50 ms) over HTTP (p99)",
                    r["mode"], f"{r['first_lag_ms_p99']:.2f} ms",
                    r["first_lag_ms_p99"] <= target, target - r["first_lag_ms_p99"],
                ))
        R.table(
            ["follower", "statuses", "leader's first event", "first-event lag p50", "p99",
             "last-event lag p50", "p99", "target (p99)"],
            rows,
            ["---", "---", "---:", "---:", "---:", "---:", "---:", "---"],
        )
    if replay:
        R.p(
            f"Replay of a recorded {replay[0]['events']}-event stream (`stream_with` on a HIT, "
            "the lookup included, read to the end as fast as possible), repeated for 2 s."
        )
        R.p()
        rows = []
        for r in replay:
            rows.append([r["backend"], fmt_num(r["replays"]), fmt_num(r["events_per_s_p50"]),
                         fmt_num(r["events_per_s_min"])])
            R.targets.append((
                "streams: replay ≥ 100k events/s",
                r["backend"], f"{fmt_num(r['events_per_s_min'])} events/s (slowest replay)",
                r["events_per_s_min"] >= 100_000, r["events_per_s_min"] - 100_000,
            ))
        R.table(["backend", "replays", "events/s p50", "slowest replay"], rows,
                ["---", "---:", "---:", "---:"])


def render_proxy(R):
    recs = R.of("proxy")
    if not recs:
        return
    R.p("## Proxy: larder proxy vs LiteLLM's proxy")
    R.p()
    R.p(
        "The same fake provider (`larder_native::testing::FakeLlm`) behind both; both cache in "
        "the same Redis (LiteLLM `cache: true`, `type: redis`, one worker). The load generator "
        "runs in the benchmark process on the same two cores. *Hits*: one cached chat "
        "completion repeated by 1 and by 50 concurrent clients; *upstream calls* counts what "
        "reached the provider meanwhile (0: every request was a hit). *Miss*: 50 new questions "
        "in a row, each interleaved with the same request sent straight to the provider; "
        "*added* is the difference of the medians. *Stampede*: 100 identical new requests at "
        "once, the model taking 300 ms. *proxy Worker (workerd)*: `examples/proxy-worker` in "
        "workerd from npm, caching in the same Redis through `larder gateway` (one HTTP "
        "request to the gateway per hit)."
    )
    R.p()
    rows = []
    by = {}
    size = next((r for r in recs if r.get("kind") == "worker_size"), None)
    for r in recs:
        if r.get("kind") == "hits":
            by[(r["proxy"], r["concurrency"])] = r
            rows.append([r["proxy"], f"hits × {r['concurrency']}", fmt_num(r["rps"]) + " req/s",
                         f"{r['p50_ms']:.2f} ms", f"{r['p99_ms']:.2f} ms",
                         str(r.get("upstream_calls", "–")), str(r["errors"])])
        elif r.get("kind") == "miss":
            rows.append([r["proxy"], "miss", f"+{r['added_p50_ms']:.2f} ms over direct",
                         f"{r['through_p50_ms']:.2f} ms", f"{r['through_p99_ms']:.2f} ms", "–", "–"])
            if r["proxy"].startswith("larder"):
                R.targets.append(("proxy: a miss adds ≤ 1 ms p50", r["proxy"],
                                  f"{r['added_p50_ms']:.2f} ms", r["added_p50_ms"] <= 1.0,
                                  1.0 - r["added_p50_ms"]))
        elif r.get("kind") == "stampede":
            rows.append([r["proxy"], "stampede × 100", f"{r['ok']} answered", "–", "–",
                         f"**{r['upstream_calls']}**", "–"])
            if r["proxy"].startswith("larder"):
                peer = next((x for x in recs if x.get("kind") == "stampede"
                             and not x["proxy"].startswith("larder")), None)
                R.targets.append(("proxy: 1 upstream call for 100 concurrent identical requests",
                                  r["proxy"], f"{r['upstream_calls']}" + (
                                      f" (LiteLLM: {peer['upstream_calls']})" if peer else ""),
                                  r["upstream_calls"] == 1, -r["upstream_calls"]))
    R.table(["proxy", "case", "throughput / result", "p50", "p99", "upstream calls", "errors"],
            rows, ["---", "---", "---:", "---:", "---:", "---:", "---:"])
    mine1 = by.get(("larder proxy", 1))
    if mine1:
        R.targets.append(("proxy: cache-hit p50 ≤ 1 ms", "larder proxy, 1 client",
                          f"{mine1['p50_ms']:.2f} ms", mine1["p50_ms"] <= 1.0,
                          1.0 - mine1["p50_ms"]))
    worker1 = by.get(("proxy Worker (workerd)", 1))
    if size or (worker1 and mine1):
        R.p()
    if size:
        R.p(f"The proxy Worker's wasm: {size['raw_bytes']:,} bytes, {size['gzip_bytes']:,} "
            "bytes gzip -9 (the free plan allows 3 MB gzip).")
        R.targets.append(("proxy Worker: wasm ≤ 1 MB gzip", "examples/proxy-worker",
                          f"{size['gzip_bytes'] / 1000:.0f} KB", size["gzip_bytes"] <= 1_000_000,
                          1_000_000 - size["gzip_bytes"]))
    if worker1 and mine1:
        R.p(f"A hit through the Worker in workerd takes {worker1['p50_ms']:.2f} ms p50 "
            f"({worker1['p99_ms']:.2f} ms p99), "
            f"{worker1['p50_ms'] / mine1['p50_ms']:.1f}× a hit on `larder proxy` "
            f"({mine1['p50_ms']:.2f} ms), one client each, same run.")
    for c in (1, 50):
        mine, peer = by.get(("larder proxy", c)), by.get(("LiteLLM proxy", c))
        if mine and peer and peer["rps"] > 0:
            ratio = mine["rps"] / peer["rps"]
            R.targets.append(("proxy: cache-hit throughput ≥ 10× LiteLLM's",
                              f"{c} client(s)", f"{ratio:.0f}×", ratio >= 10, ratio - 10))


def render_seal(R):
    recs = R.of("seal")
    if not recs:
        return
    R.p("## Encryption at rest")
    R.p()
    R.p(
        "`Keyring::seal` / `open` (AES-256-GCM, a random 96-bit nonce from the system, the "
        "Redis key as associated data) of a 1 KB and a 64 KB value, and a keyed request hash "
        "(HMAC-SHA-256 of a 111-byte canonical request; with the per-tenant HKDF "
        "derivation). Median of 7 rounds of 200 ms, one thread."
    )
    R.p()
    rows = []
    for r in recs:
        if r.get("kind") == "value":
            rows.append([f"{r['kb']} KB value", f"{r['seal_ns'] / 1000:.2f} µs",
                         f"{r['open_ns'] / 1000:.2f} µs",
                         f"{r['seal_ns_per_kb'] / 1000:.2f} / {r['open_ns_per_kb'] / 1000:.2f} µs"])
            worst = max(r["seal_ns_per_kb"], r["open_ns_per_kb"]) / 1000
            R.targets.append(("encryption: ≤ 2 µs per KB (seal and open)", f"{r['kb']} KB",
                              f"{worst:.2f} µs/KB", worst <= 2.0, 2.0 - worst))
        elif r.get("kind") == "hash":
            rows.append(["keyed request hash", f"{r['hmac_ns'] / 1000:.2f} µs",
                         f"{r['tenant_hkdf_and_hmac_ns'] / 1000:.2f} µs with the tenant key", "–"])
    R.table(["case", "seal / HMAC", "open / per tenant", "per KB (seal / open)"], rows,
            ["---", "---:", "---:", "---:"])


def render_gateway(R):
    recs = R.of("gateway")
    if not recs:
        return
    R.p("## Gateway (Redis over HTTP, Upstash REST dialect)")
    R.p()
    c = recs[0]
    R.p(
        f"GET of a 1 KB value against one redis-server, {c.get('connections')} connections, "
        f"wrk for {c.get('duration_s')} s per HTTP row (2 threads); the load generator, the HTTP "
        "server and Redis share the machine. Pipelines are 10 GETs per request; *commands/s* "
        "counts each GET. webdis has no pipeline endpoint."
    )
    R.p()
    rows = []
    for r in recs:
        cpr = r.get("commands_per_request", 1)
        if "requests_per_sec" in r:
            req, cmds = r["requests_per_sec"], r["requests_per_sec"] * cpr
        else:
            req, cmds = r["commands_per_sec"] / cpr, r["commands_per_sec"]
        rows.append([r["server"], r["mode"], fmt_num(req), fmt_num(cmds),
                     fmt_us(r.get("p50_ms", 0) * 1000), fmt_us(r.get("p99_ms", 0) * 1000),
                     r.get("non_2xx", 0)])
    R.table(["server", "mode", "requests/s", "commands/s", "p50", "p99", "non-2xx"], rows,
            ["---", "---", "---:", "---:", "---:", "---:", "---:"])
    R.p(
        "`redis-benchmark` latency with `-P 10` is per command batch as that tool reports it."
    )
    R.p()


def render_edge(R):
    recs = R.of("edge")
    if not recs:
        return
    R.p("## Edge: the example Worker in workerd")
    R.p()
    size = next((r for r in recs if r.get("kind") == "wasm_size"), None)
    if size:
        R.p(
            f"Worker wasm (`examples/edge-worker`, release, `opt-level = \"z\"`, LTO, stripped, "
            f"wasm-opt): **{size['raw_bytes'] / 1024:.0f} KiB raw, {size['gzip_bytes'] / 1024:.0f} "
            f"KiB gzip -9** ({size['raw_bytes']:,} / {size['gzip_bytes']:,} bytes)."
        )
        R.p()
    js = next((r for r in recs if r.get("kind") == "js_wasm_size"), None)
    if js:
        R.p(
            f"The npm package's wasm (`js/`, larder-core through wasm-bindgen, wasm-opt -Oz): "
            f"**{js['raw_bytes'] / 1024:.0f} KiB raw, {js['gzip_bytes'] / 1024:.0f} KiB gzip -9** "
            f"({js['raw_bytes']:,} / {js['gzip_bytes']:,} bytes)."
        )
        R.p()
        R.targets.append(("npm package: wasm ≤ 300 KB gzip", "js/dist/wasm/larder_bg.wasm",
                          f"{js['gzip_bytes'] / 1000:.0f} KB", js["gzip_bytes"] <= 300_000,
                          300_000 - js["gzip_bytes"]))
    rows = [
        [r["op"], r["path"], fmt_num(r.get("requests_per_sec")), fmt_us(r.get("p50_ms", 0) * 1000),
         fmt_us(r.get("p99_ms", 0) * 1000), r.get("non_2xx", 0)]
        for r in recs
        if "op" in r
    ]
    if rows:
        R.p(
            f"One connection, requests one after another (wrk -c1, {recs[-1].get('duration_s')} s), "
            "1 KB values; workerd, the gateway and Redis on this machine."
        )
        R.p()
        R.table(["op", "path", "requests/s", "p50", "p99", "non-2xx"], rows,
                ["---", "---", "---:", "---:", "---:", "---:"])


def render_outage(R):
    recs = [r for r in R.of("outage") if "client" in r]
    if not recs:
        return
    R.p("## Outage: one GET while Redis is down")
    R.p()
    R.p(
        "Redis is killed (SIGKILL) after each client connected and the key `warm` was cached; "
        "then GETs run one after another (≤ 300 calls or 5 s per client). larder uses its "
        "default options (500 ms response timeout, 1 s connect timeout); the breaker its defaults "
        "(opens after 5 consecutive failures, probes every 250 ms). redis-rs `ConnectionManager` "
        "runs with its defaults, as 10 concurrent tasks × 2 calls because each call takes seconds."
    )
    R.p()
    R.table(
        ["client", "calls", "p50", "p99", "max", "served the value", "errors"],
        [[r["client"], r["n"], fmt_us(r["p50_us"]), fmt_us(r["p99_us"]), fmt_us(r["max_us"]),
          r.get("served_value", 0), r.get("errors", 0)] for r in recs],
        ["---", "---:", "---:", "---:", "---:", "---:", "---:"],
    )


# ------------------------------------------------------------------------------------------
# The chart: hand-written SVG, three panels of horizontal bars.

PALETTE = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#718096"]


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def bar_panel(title, groups, series, unit_fmt, log=False, width=900, y0=0):
    """groups: [(label, {series: value})]. Returns (svg parts, height)."""
    import math

    left, right = 330, 80
    start = y0
    bar_h, gap = 12, 10
    parts = [f'<text x="10" y="{y0 + 20}" font-size="15" font-weight="bold">{esc(title)}</text>']
    # legend
    lx, ly = left, y0 + 30
    for i, s in enumerate(series):
        if lx + 24 + 7 * len(s) > width:
            lx, ly = left, ly + 16
        parts.append(f'<rect x="{lx}" y="{ly}" width="12" height="12" fill="{PALETTE[i % len(PALETTE)]}"/>')
        parts.append(f'<text x="{lx + 16}" y="{ly + 10}" font-size="12">{esc(s)}</text>')
        lx += 24 + 7 * len(s)
    y0 += ly - (y0 + 30)
    vals = [v for _, d in groups for v in d.values() if v and v > 0]
    if not vals:
        return parts, 60
    vmax = max(vals)
    vmin = min(vals)
    plot_w = width - left - right
    if log:
        lo = 10 ** math.floor(math.log10(vmin))
        hi = 10 ** math.ceil(math.log10(vmax))
        span = math.log10(hi) - math.log10(lo)

        def x(v):
            return left + plot_w * (math.log10(max(v, lo)) - math.log10(lo)) / span
    else:
        hi = vmax * 1.05

        def x(v):
            return left + plot_w * v / hi
    y = y0 + 55
    top = y
    for label, d in groups:
        n = sum(1 for s in series if s in d)
        gh = n * bar_h
        parts.append(
            f'<text x="{left - 8}" y="{y + gh / 2 + 4}" font-size="12" text-anchor="end">{esc(label)}</text>'
        )
        for i, s in enumerate(series):
            if s not in d:
                continue
            v = d[s]
            w = max(x(v) - left, 1) if v and v > 0 else 0
            parts.append(
                f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{PALETTE[i % len(PALETTE)]}">'
                f"<title>{esc(label)} — {esc(s)}: {esc(unit_fmt(v))}</title></rect>"
            )
            parts.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 3}" font-size="10">{esc(unit_fmt(v))}</text>')
            y += bar_h
        y += gap
    # axis
    parts.append(f'<line x1="{left}" y1="{top - 4}" x2="{left}" y2="{y}" stroke="#333"/>')
    if log:
        e = math.log10(lo)
        while e <= math.log10(hi) + 1e-9:
            xv = x(10 ** e)
            parts.append(f'<line x1="{xv:.1f}" y1="{top - 4}" x2="{xv:.1f}" y2="{y}" stroke="#ccc" stroke-dasharray="2,3"/>')
            parts.append(f'<text x="{xv:.1f}" y="{y + 14}" font-size="10" text-anchor="middle">{esc(unit_fmt(10 ** e))}</text>')
            e += 1
    return parts, y - start + 30


def render_svg(R, path):
    panels = []
    thr = R.of("memory", kind="throughput")
    if thr:
        contenders = list(OrderedDict.fromkeys(r["contender"] for r in thr))
        groups = []
        for threads in sorted({r["threads"] for r in thr}):
            for w in OrderedDict.fromkeys(r["workload"] for r in thr):
                d = {r["contender"]: r["mops"] for r in thr if r["threads"] == threads and r["workload"] == w}
                groups.append((f"{w}, {threads} thr", d))
        panels.append(("Memory tier throughput (million ops/s, higher is better)", groups, contenders,
                       lambda v: f"{v:.1f} M", False))
    red = R.of("redis")
    if red:
        groups = OrderedDict()
        for r in red:
            label = f"{r['topology']} {r['op']} ×{r['tasks']}"
            groups.setdefault(label, {})[r["client"]] = r["ops_per_sec"]
        panels.append(("Native Redis throughput (ops/s, higher is better)", list(groups.items()),
                       ["raw redis-rs", "larder transport", "larder cache"], lambda v: f"{v / 1000:.1f} k", False))
    lat = []
    for r in R.of("tiered"):
        lat.append((f"tiered: {r['case'].split(' (')[0]}", {"p50": r["p50_us"], "p99": r["p99_us"]}))
    for r in red:
        if r["tasks"] == 1 and r["client"] in ("raw redis-rs", "larder cache") and r["topology"] == "standalone":
            lat.append((f"{r['op']} ×1 {r['client']}", {"p50": r["p50_us"], "p99": r["p99_us"]}))
    for r in R.of("gateway"):
        if "p50_ms" in r and r.get("mode") == "single GET":
            lat.append((f"HTTP GET ×{r.get('connections')}: {r['server']}", {"p50": r["p50_ms"] * 1000, "p99": r["p99_ms"] * 1000}))
    for r in R.of("edge"):
        if "op" in r and "p50_ms" in r:
            label = f"Worker {r['op']} (workerd)" if "workerd" in r.get("path", "") else f"{r['op']}, 1 conn"
            lat.append((label, {"p50": r["p50_ms"] * 1000, "p99": r["p99_ms"] * 1000}))
    for r in R.of("stampede"):
        if "waiters" in r:
            lat.append((f"stampede {r['transport'].split()[0]} {r['processes']}×{r['tasks_per_process']}",
                        {"p50": max(r["p50_us"], 0.001), "p99": max(r["p99_us"], 0.001)}))
    for r in R.of("outage"):
        if "client" in r:
            lat.append((f"outage: {r['client'].replace('larder ', '')}", {"p50": r["p50_us"], "p99": r["p99_us"]}))
    if lat:
        panels.append(("Latency (log scale, lower is better)", lat, ["p50", "p99"], lambda v: fmt_us(v), True))
    width = 900
    parts, y = [], 0
    for title, groups, series, f, log in panels:
        p, h = bar_panel(title, groups, series, f, log, width, y)
        parts += p
        y += h + 10
    meta = next(iter(R.of("meta")), {})
    note = f"larder benchmarks — {meta.get('cpu', '')}, {meta.get('cores', '?')} cores; shared VM, see BENCHMARKS.md"
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y + 30}" '
        f'viewBox="0 0 {width} {y + 30}" font-family="sans-serif">',
        '<rect width="100%" height="100%" fill="white"/>',
        *parts,
        f'<text x="10" y="{y + 20}" font-size="11" fill="#555">{esc(note)}</text>',
        "</svg>",
    ]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(svg) + "\n")


def render(results, md_path, svg_path):
    R = Report(load(results))
    metas = R.of("meta")
    start = next((m for m in metas if m.get("phase") == "start"), metas[0] if metas else {})
    end = next((m for m in metas if m.get("phase") == "end"), {})
    R.p("# larder benchmarks")
    R.p()
    R.p(
        "Generated by `bash scripts/bench.sh` (which starts its own Redis servers, runs every "
        "benchmark, and writes this file and [`docs/bench.svg`](docs/bench.svg) from the JSON "
        "lines the benchmarks emit, with `scripts/bench-report.py`). Not part of CI pass/fail."
    )
    R.p()
    R.p("![latency and throughput](docs/bench.svg)")
    R.p()
    R.p("## The run")
    R.p()
    loads = [m for m in R.recs if m.get("suite") == "load"]
    la = [l["load1"] for l in loads]
    R.p(
        "> **Read these numbers as ratios, not absolutes.** This run was on a *shared* "
        f"{start.get('cores', '?')}-core VM while other work (other agents compiling Rust) was "
        "running: the benchmark processes, the load generators, Redis and the HTTP servers also "
        "share the same two cores. "
        + (
            f"Load average before the run: {start.get('loadavg', '?').split()[0]} "
            f"({start.get('compilers_running', 0)} `rustc` processes of other jobs running; busiest "
            f"processes: {start.get('busiest', '?')}). "
            if start
            else ""
        )
        + (
            f"During the run (1-min load average sampled every 5 s, includes the benchmarks "
            f"themselves): mean {statistics.mean(la):.1f}, max {max(la):.1f}. "
            if la
            else ""
        )
        + "Each comparison (larder vs its peer) is measured back to back in the same process, "
        "so it is far more trustworthy than any single figure."
    )
    R.p()
    R.table(
        ["", ""],
        [
            ["CPU", start.get("cpu", "?")],
            ["cores", start.get("cores", "?")],
            ["memory", start.get("memory", "?")],
            ["kernel", start.get("kernel", "?")],
            ["rustc", start.get("rustc", "?")],
            ["Redis", start.get("redis_server", "?")],
            ["redis-benchmark", start.get("redis_benchmark", "?")],
            ["wrk / webdis (Debian)", f"{start.get('wrk', '?')} / {start.get('webdis', '?')}"],
            ["peer crates (Cargo.lock)", ", ".join(f"{k} {v}" for k, v in sorted(start.get("crates", {}).items()))],
            ["larder commit", start.get("git", "?")],
            ["started / finished (UTC)", f"{start.get('date', '?')} / {end.get('date', '?')}"],
            ["durations (s)", ", ".join(f"{l['part']} {l['seconds']}" for l in R.of("timing"))],
        ],
        ["---", "---"],
    )
    body_start = len(R.out)
    render_memory(R)
    render_seal(R)
    render_redis(R)
    render_tiered(R)
    render_stampede(R)
    render_streams(R)
    render_proxy(R)
    render_gateway(R)
    render_edge(R)
    render_outage(R)
    body = R.out[body_start:]
    R.out = R.out[:body_start]
    if R.targets:
        R.p("## Targets")
        R.p()
        R.p(
            "Each target is checked in every case the suite measures; *worst* is the case "
            "furthest from it. The sections below have every figure."
        )
        R.p()
        classes = OrderedDict()
        for cls, case, measured, ok, key in R.targets:
            classes.setdefault(cls, []).append((case, measured, ok, key))
        rows = []
        for cls, cases in classes.items():
            met = sum(1 for c in cases if c[2])
            worst = min(cases, key=lambda c: c[3])
            missed = [f"{c[0]} ({c[1]})" for c in cases if not c[2]]
            rows.append([
                cls,
                f"{'✅' if met == len(cases) else '❌'} {met} of {len(cases)}",
                f"{worst[1]} ({worst[0]})",
                "; ".join(missed) if missed else "–",
            ])
        R.table(["target", "cases met", "worst", "missed in"], rows, ["---", "---", "---", "---"])
    R.out += body
    with open(md_path, "w") as f:
        f.write("\n".join(R.out).rstrip() + "\n")
    render_svg(R, svg_path)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "wrk":
        parse_wrk(args)
    elif cmd == "redis-benchmark":
        parse_redis_benchmark(args)
    elif cmd == "meta":
        meta(args)
    elif cmd == "render":
        render(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
