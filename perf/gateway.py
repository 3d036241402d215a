"""The OpenAI-compatible gateway against native libaios, in the same run on the same daemon.

Targets (issue 11): gateway overhead over a native llm_chat of 1 token <= 3 ms p50; 32
concurrent `openai` clients reach >= 0.9x the aggregate tokens/s of 32 native agents.
Both sides run as threads of this process (one connection each: an agent Client acting
as its aid, or an `openai.OpenAI` with its own key), so they share the same handicap.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

import openai

from aiosd.gateway.keys import KeyStore
from libaios.client import Client
from perf._harness import Daemon, markdown_table, parse_args, percentile, plot_bars, write_json

SLEEPER = [sys.executable, "-c", "import time; time.sleep(3600)"]
MSGS = [{"role": "user", "content": "Write one sentence about the sea."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def native_agent(d: Daemon, name: str) -> Client:
    aid = d.client().syscall("spawn_agent", {"argv": SLEEPER, "name": name})["aid"]
    c = Client(d.home)
    c.syscall("set_aid", {"aid": aid})
    return c


def http_client(keys: KeyStore, url: str, name: str) -> openai.OpenAI:
    key, _ = keys.create(name)
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=600)


def one_native(c: Client, max_tokens: int) -> int:
    r = c.syscall("llm_chat", {"messages": MSGS, "max_tokens": max_tokens, "temperature": 0.0})
    return int(r["usage"]["completion_tokens"])


def one_http(c: openai.OpenAI, max_tokens: int) -> int:
    r = c.chat.completions.create(model="smollm2", messages=MSGS, max_tokens=max_tokens, temperature=0)
    return r.usage.completion_tokens


def overhead(native: Client, http: openai.OpenAI, n: int) -> tuple[list[float], list[float]]:
    """Interleaved, so that drift in the machine's load hits both sides alike."""
    a, b = [], []
    for i in range(n + 5):
        t0 = time.perf_counter()
        one_native(native, 1)
        t1 = time.perf_counter()
        one_http(http, 1)
        t2 = time.perf_counter()
        if i >= 5:  # warm-up: first connections, first attach
            a.append(t1 - t0)
            b.append(t2 - t1)
    return a, b


def aggregate(fns: list, per_client: int, max_tokens: int) -> tuple[float, int, float]:
    """All clients at once, each `per_client` requests in a row; (tokens/s, tokens, wall s)."""
    total = [0] * len(fns)
    go = threading.Barrier(len(fns) + 1)

    def run(i: int) -> None:
        go.wait()
        for _ in range(per_client):
            total[i] += fns[i](max_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return sum(total) / wall, sum(total), wall


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    n, clients, per, max_tokens = (40, 32, 1, 16) if args.quick else (200, 32, 3, 32)
    port = free_port()
    with Daemon(http=f"127.0.0.1:{port}", syscall_rate=1e9, max_queued_llm=256) as d:
        url = f"http://127.0.0.1:{port}/v1"
        keys = KeyStore.for_home(d.home)
        nat, web = overhead(native_agent(d, "lat-native"), http_client(keys, url, "lat-http"), n)
        natives = [native_agent(d, f"nat{i}") for i in range(clients)]
        https = [http_client(keys, url, f"web{i}") for i in range(clients)]
        for c, h in zip(natives, https, strict=True):  # connect and attach before timing
            one_native(c, 1)
            one_http(h, 1)
        runs = []
        for side in ("native", "http", "native", "http"):  # alternated, twice
            fns = [lambda m, c=c: one_native(c, m) for c in natives] if side == "native" else \
                  [lambda m, h=h: one_http(h, m) for h in https]
            runs.append((side, *aggregate(fns, per, max_tokens)))
    best = {s: max(r[1] for r in runs if r[0] == s) for s in ("native", "http")}
    res = {"native_1tok_p50_s": percentile(nat, 50), "http_1tok_p50_s": percentile(web, 50),
           "native_1tok_p99_s": percentile(nat, 99), "http_1tok_p99_s": percentile(web, 99),
           "overhead_p50_s": percentile(web, 50) - percentile(nat, 50), "requests": n,
           "clients": clients, "per_client": per, "max_tokens": max_tokens,
           "native_tok_s": best["native"], "http_tok_s": best["http"],
           "ratio_http_vs_native": best["http"] / best["native"],
           "runs": [{"side": s, "tok_s": t, "tokens": k, "wall_s": w} for s, t, k, w in runs]}
    write_json("gateway", res)
    print(markdown_table(["figure", "measured", "target"], [
        ["native llm_chat, 1 token, p50", f"{res['native_1tok_p50_s'] * 1e3:.2f} ms", "baseline"],
        ["gateway chat.completions, 1 token, p50", f"{res['http_1tok_p50_s'] * 1e3:.2f} ms", ""],
        ["gateway overhead p50", f"{res['overhead_p50_s'] * 1e3:.2f} ms", "<= 3 ms"],
        [f"{clients} native agents, tokens/s", f"{best['native']:.1f}", "baseline"],
        [f"{clients} openai clients, tokens/s", f"{best['http']:.1f}", ""],
        ["http / native", f"{res['ratio_http_vs_native']:.2f}x", ">= 0.9x"],
    ]))
    plot_bars("gateway", ["1-token p50 (ms)", f"{clients} clients tok/s"], {
        "native": [res["native_1tok_p50_s"] * 1e3, best["native"]],
        "gateway": [res["http_1tok_p50_s"] * 1e3, best["http"]]},
        ylabel="ms | tokens/s", title="OpenAI gateway vs native libaios")


if __name__ == "__main__":
    main()
