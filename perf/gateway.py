"""The OpenAI-compatible gateway against native libaios, in the same run on the same daemon.

Targets (issue 11): gateway overhead over a native llm_chat of 1 token <= 3 ms p50; 32
concurrent `openai` clients reach >= 0.9x the aggregate tokens/s of 32 native agents.
Clients run in processes of their own (perf/_gateway_client.py), a thread per client:
native ones are agent rows acting through set_aid, HTTP ones `openai.OpenAI` with a key
each. The overhead is shown twice: through a bare keep-alive HTTP client (the gateway's
own cost) and through the openai package (what a user of it sees end to end).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from pathlib import Path  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from aiosd.gateway.keys import KeyStore  # noqa: E402
from perf._harness import REPO, Daemon, markdown_table, parse_args, percentile, plot_bars, write_json  # noqa: E402

SLEEPER = [sys.executable, "-c", "import time; time.sleep(3600)"]
PROCS = 4  # client processes per side; each runs clients/PROCS threads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_proc(d: Daemon, *argv: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "perf._gateway_client", *map(str, argv)], env=d.env, cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(p: subprocess.Popen, timeout: float = 1800) -> dict:
    out, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"client failed ({p.returncode}): {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def aggregate(d: Daemon, port: int, side: str, creds: list, per: int, max_tokens: int) -> dict:
    chunks = [creds[i::PROCS] for i in range(PROCS)]
    procs = [client_proc(d, "load", port, d.home, per, max_tokens, side, *c) for c in chunks]
    for p in procs:  # imported, connected, warmed (a key's agent attached)
        if p.stdout.readline().strip() != "READY":
            raise RuntimeError(f"client failed: {p.stderr.read()[-2000:]}")
    start_at = time.time()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [result(p) for p in procs]
    wall = max(o["end"] for o in outs) - start_at
    tokens = sum(o["tokens"] for o in outs)
    return {"side": side, "tokens": tokens, "wall_s": wall, "tok_s": tokens / wall}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    n, clients, per, max_tokens = (50, 32, 1, 8) if args.quick else (300, 32, 4, 32)
    port = free_port()
    with Daemon(http=f"127.0.0.1:{port}", syscall_rate=1e9, max_queued_llm=256) as d:
        root, keys = d.client(), KeyStore.for_home(d.home)
        spawn = lambda name: root.syscall("spawn_agent", {"argv": SLEEPER, "name": name})["aid"]  # noqa: E731
        lat = result(client_proc(d, "latency", port, d.home, n, keys.create("lat")[0], spawn("lat-native")))
        natives = [spawn(f"nat{i}") for i in range(clients)]
        https = [keys.create(f"web{i}")[0] for i in range(clients)]
        runs = [aggregate(d, port, side, natives if side == "native" else https, per, max_tokens)
                for side in ("native", "http", "native", "http")]  # alternated, twice
    p50 = {k: percentile(v, 50) for k, v in lat.items()}
    best = {s: max(r["tok_s"] for r in runs if r["side"] == s) for s in ("native", "http")}
    res = {"native_1tok_p50_s": p50["native"], "raw_http_1tok_p50_s": p50["raw_http"],
           "openai_1tok_p50_s": p50["openai"], "native_1tok_p99_s": percentile(lat["native"], 99),
           "raw_http_1tok_p99_s": percentile(lat["raw_http"], 99), "openai_1tok_p99_s": percentile(lat["openai"], 99),
           "overhead_p50_s": p50["raw_http"] - p50["native"],
           "overhead_openai_pkg_p50_s": p50["openai"] - p50["native"], "requests": n,
           "clients": clients, "per_client": per, "max_tokens": max_tokens,
           "native_tok_s": best["native"], "http_tok_s": best["http"],
           "ratio_http_vs_native": best["http"] / best["native"], "runs": runs}
    write_json("gateway", res)
    ms = lambda s: f"{s * 1e3:.2f} ms"  # noqa: E731
    print(markdown_table(["figure", "measured", "target"], [
        ["native llm_chat, 1 token, p50", ms(p50["native"]), "baseline"],
        ["gateway, bare HTTP client, 1 token, p50", ms(p50["raw_http"]), ""],
        ["gateway, openai package, 1 token, p50", ms(p50["openai"]), ""],
        ["gateway overhead p50 (bare HTTP)", ms(res["overhead_p50_s"]), "<= 3 ms"],
        ["gateway overhead p50 (openai package)", ms(res["overhead_openai_pkg_p50_s"]), "<= 3 ms"],
        [f"{clients} native agents, tokens/s", f"{best['native']:.1f}", "baseline"],
        [f"{clients} openai clients, tokens/s", f"{best['http']:.1f}", ""],
        ["openai / native", f"{res['ratio_http_vs_native']:.2f}x", ">= 0.9x"],
    ]))
    plot_bars("gateway", ["1-token p50 (ms)", f"{clients} clients tok/s / 100"], {
        "native": [p50["native"] * 1e3, best["native"] / 100],
        "gateway (openai pkg)": [p50["openai"] * 1e3, best["http"] / 100]},
        ylabel="ms | tokens/s / 100", title="OpenAI gateway vs native libaios")


if __name__ == "__main__":
    main()
