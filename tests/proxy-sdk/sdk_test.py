"""The official Python SDKs (openai, anthropic) against `larder proxy` in front of the fake
provider. Run by native/tests/proxy (test `official_sdks`) with LARDER_PROXY_URL set.

Each check: MISS then HIT with identical content (streamed events identical), headers
honoured, tenants isolated, STALE when the upstream fails, a 400 passed through and not
stored. Prints one line per check; exits non-zero on the first failure.
"""

import os
import sys
import time
import uuid

import anthropic
import openai

BASE = os.environ["LARDER_PROXY_URL"]
RUN = uuid.uuid4().hex[:8]


def oa(key="sk-tenant-a"):
    return openai.OpenAI(base_url=BASE + "/v1", api_key=key, max_retries=0)


def an(key="sk-ant-tenant-a"):
    return anthropic.Anthropic(base_url=BASE, api_key=key, max_retries=0)


def check(cond, what):
    if not cond:
        print(f"FAIL {what}", flush=True)
        sys.exit(1)


def cache_of(raw):
    return raw.headers.get("x-larder-cache")


def chat_args(text, **kw):
    return dict(
        model="gpt-4o-mini",
        temperature=0,
        messages=[{"role": "user", "content": f"{text} {RUN}"}],
        **kw,
    )


def twice(call):
    """Calls twice; returns (first raw, first parsed, second raw, second parsed)."""
    r1 = call()
    p1 = r1.parse()
    r2 = call()
    p2 = r2.parse()
    return r1, p1, r2, p2


def events(stream):
    return [e.model_dump_json() for e in stream]


def chat_plain():
    c = oa()
    r1, p1, r2, p2 = twice(lambda: c.chat.completions.with_raw_response.create(**chat_args("plain")))
    check((cache_of(r1), cache_of(r2)) == ("MISS", "HIT"), f"chat: {cache_of(r1)} {cache_of(r2)}")
    check(p1.id == p2.id and p1.choices[0].message.content == p2.choices[0].message.content, "chat: same answer")
    check(p1.choices[0].message.content.startswith("You said: plain"), "chat: content")
    check(r2.headers.get("age") is not None, "chat: Age on a hit")


def chat_stream():
    c = oa()
    args = chat_args("streamed", stream=True, stream_options={"include_usage": True},
                     tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}])
    r1 = c.chat.completions.with_raw_response.create(**args)
    e1 = events(r1.parse())
    r2 = c.chat.completions.with_raw_response.create(**args)
    e2 = events(r2.parse())
    check((cache_of(r1), cache_of(r2)) == ("MISS", "HIT"), f"chat stream: {cache_of(r1)} {cache_of(r2)}")
    check(e1 == e2 and len(e1) > 3, "chat stream: identical chunks")
    check(any('"tool_calls"' in e for e in e1), "chat stream: tool-call deltas kept")
    check(any('"usage":{' in e.replace(" ", "") for e in e1), "chat stream: usage chunk kept")
    # The helper that accumulates a stream sees the same final message.
    with c.chat.completions.stream(**{k: v for k, v in args.items() if k != "stream"}) as s:
        final = s.get_final_completion()
    check(final.choices[0].message.tool_calls[0].function.arguments == '{"city":"Paris"}', "chat stream helper")


def responses():
    c = oa()
    r1, p1, r2, p2 = twice(lambda: c.responses.with_raw_response.create(model="gpt-4.1-mini", input=f"resp {RUN}"))
    check((cache_of(r1), cache_of(r2)) == ("MISS", "HIT"), "responses")
    check(p1.output_text == p2.output_text and p1.id == p2.id, "responses: same answer")
    s1 = c.responses.with_raw_response.create(model="gpt-4.1-mini", input=f"resp stream {RUN}", stream=True)
    e1 = events(s1.parse())
    s2 = c.responses.with_raw_response.create(model="gpt-4.1-mini", input=f"resp stream {RUN}", stream=True)
    e2 = events(s2.parse())
    check((cache_of(s1), cache_of(s2)) == ("MISS", "HIT"), "responses stream")
    check(e1 == e2 and any("response.completed" in e for e in e1), "responses stream: identical events")


def embeddings():
    c = oa()
    r1, p1, r2, p2 = twice(lambda: c.embeddings.with_raw_response.create(model="text-embedding-3-small", input=[f"e {RUN}"]))
    check((cache_of(r1), cache_of(r2)) == ("MISS", "HIT"), "embeddings")
    check(p1.data[0].embedding == p2.data[0].embedding, "embeddings: same vectors")


def messages():
    c = an()
    args = dict(model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": f"hi {RUN}"}])
    r1, p1, r2, p2 = twice(lambda: c.messages.with_raw_response.create(**args))
    check((cache_of(r1), cache_of(r2)) == ("MISS", "HIT"), "messages")
    check(p1.id == p2.id and p1.content[0].text == p2.content[0].text, "messages: same answer")
    sargs = dict(args, messages=[{"role": "user", "content": f"stream {RUN}"}],
                 tools=[{"name": "get_weather", "input_schema": {"type": "object"}}])
    s1 = c.messages.with_raw_response.create(stream=True, **sargs)
    e1 = events(s1.parse())
    s2 = c.messages.with_raw_response.create(stream=True, **sargs)
    e2 = events(s2.parse())
    check((cache_of(s1), cache_of(s2)) == ("MISS", "HIT"), "messages stream")
    check(e1 == e2 and any("input_json_delta" in e for e in e1), "messages stream: identical events, tool input kept")
    with c.messages.stream(**sargs) as s:
        final = s.get_final_message()
    check(final.content[0].input == {"city": "Paris"}, "messages stream helper")


def headers_honoured():
    c = oa()
    args = chat_args("headers")
    r = c.chat.completions.with_raw_response.create(**args, extra_headers={"x-larder-cache": "no-store"})
    check(cache_of(r) == "MISS", "no-store")
    r = c.chat.completions.with_raw_response.create(**args)
    check(cache_of(r) == "MISS", "no-store stored nothing")
    r = c.chat.completions.with_raw_response.create(**args, extra_headers={"cf-aig-skip-cache": "true"})
    check(cache_of(r) == "BYPASS" and r.headers.get("cf-aig-cache-status") == "MISS", "cf-aig-skip-cache")
    r = c.chat.completions.with_raw_response.create(**args, extra_headers={"Helicone-Cache-Enabled": "true"})
    check(cache_of(r) == "HIT" and r.headers.get("helicone-cache") == "HIT", "Helicone-Cache-Enabled")
    try:
        c.chat.completions.create(**chat_args("never cached"), extra_headers={"x-larder-cache": "only-if-cached"})
        check(False, "only-if-cached must fail on a miss")
    except openai.APIStatusError as e:
        check(e.status_code == 504, f"only-if-cached: {e.status_code}")


def tenants():
    a, b = oa("sk-tenant-a"), oa("sk-tenant-b")
    args = chat_args("tenants")
    ra = a.chat.completions.with_raw_response.create(**args)
    rb = b.chat.completions.with_raw_response.create(**args)
    check((cache_of(ra), cache_of(rb)) == ("MISS", "MISS"), "two keys, two tenants")
    check(ra.parse().id != rb.parse().id, "tenants: different answers")


def stale_and_errors():
    c = oa()
    args = chat_args("stale")
    first = c.chat.completions.create(**args, extra_headers={"x-larder-ttl": "1"})
    time.sleep(1.2)
    r = c.chat.completions.with_raw_response.create(**args, extra_headers={"x-fake-status": "500"})
    check(cache_of(r) == "STALE" and r.parse().id == first.id, "STALE on a 500")
    try:
        c.chat.completions.create(**chat_args("bad request"), extra_headers={"x-fake-status": "400"})
        check(False, "a 400 must reach the caller")
    except openai.BadRequestError as e:
        check("fake failure 400" in str(e), "400 passed through")
    r = c.chat.completions.with_raw_response.create(**chat_args("bad request"))
    check(cache_of(r) == "MISS", "the 400 was not stored")
    try:
        an().messages.create(model="claude-sonnet-4-5", max_tokens=8,
                             messages=[{"role": "user", "content": f"x {RUN}"}],
                             extra_headers={"x-fake-status": "500"})
        check(False, "a 500 with nothing cached must reach the caller")
    except anthropic.InternalServerError:
        pass


for test in [chat_plain, chat_stream, responses, embeddings, messages, headers_honoured, tenants, stale_and_errors]:
    test()
    print(f"ok {test.__name__}", flush=True)
print("all python sdk checks passed", flush=True)
