"""Client side of perf/gateway.py, run as its own process so that the measuring process's
own threads and sockets do not share a GIL with the clients being timed.

    python -m perf._gateway_client latency PORT HOME N KEY AID
    python -m perf._gateway_client load PORT HOME PER MAX_TOKENS SIDE CRED...
        (SIDE native: CRED are aids; SIDE http: CRED are keys; one thread per CRED)

`load` prints READY once connected and warm, starts on a line on stdin, then prints one
JSON line (as `latency` does).
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time

import openai

from libaios.client import Client

MSGS = [{"role": "user", "content": "Write one sentence about the sea."}]


def native(home: str, aid: int):
    c = Client(home)
    c.syscall("set_aid", {"aid": aid})

    def call(max_tokens: int) -> int:
        r = c.syscall("llm_chat", {"messages": MSGS, "max_tokens": max_tokens, "temperature": 0.0})
        return int(r["usage"]["completion_tokens"])
    return call


def via_openai(port: int, key: str):
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=600)

    def call(max_tokens: int) -> int:
        r = c.chat.completions.create(model="smollm2", messages=MSGS, max_tokens=max_tokens, temperature=0)
        return r.usage.completion_tokens
    return call


def via_raw_http(port: int, key: str):
    """A bare keep-alive HTTP client: the gateway's own cost, without the openai package's."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    head = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(max_tokens: int) -> int:
        body = json.dumps({"model": "smollm2", "messages": MSGS, "max_tokens": max_tokens, "temperature": 0})
        conn.request("POST", "/v1/chat/completions", body, head)
        r = conn.getresponse()
        return json.loads(r.read())["usage"]["completion_tokens"]
    return call


def latency(port: int, home: str, n: int, key: str, aid: int) -> dict:
    fns = {"native": native(home, aid), "raw_http": via_raw_http(port, key), "openai": via_openai(port, key)}
    out: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(n + 10):  # interleaved, so that load drifts hit every side alike
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(1)
            if i >= 10:
                out[name].append(time.perf_counter() - t0)
    return out


def load(port: int, home: str, per: int, max_tokens: int, side: str, creds: list[str]) -> dict:
    fns = [native(home, int(c)) if side == "native" else via_openai(port, c) for c in creds]
    for fn in fns:  # connect (and attach a key's agent) before the clock starts
        fn(1)
    tokens = [0] * len(fns)
    ends = [0.0] * len(fns)

    def run(i: int) -> None:
        for _ in range(per):
            tokens[i] += fns[i](max_tokens)
        ends[i] = time.time()

    print("READY", flush=True)
    sys.stdin.readline()  # the parent says go once every client process is ready
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"tokens": sum(tokens), "end": max(ends)}


def main(argv: list[str]) -> None:
    mode, port, home = argv[0], int(argv[1]), argv[2]
    if mode == "latency":
        res = latency(port, home, int(argv[3]), argv[4], int(argv[5]))
    else:
        res = load(port, home, int(argv[3]), int(argv[4]), argv[5], argv[6:])
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
