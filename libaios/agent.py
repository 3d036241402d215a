"""The Agent base class: a manifest, `run(task)`, and a bounded plan → act → observe loop.

    class Echo(Agent):
        manifest = Manifest(name="echo", description="says it back", max_steps=2)

        def run(self, task):
            return self.chat([{"role": "user", "content": task}])

    if __name__ == "__main__":
        raise SystemExit(Echo.main())      # python -m agents.echo "hello"  (or aios-run agents.echo ...)

`main()` prints the answer on stdout, then one line `AIOS_TIMINGS {json}` on stderr with
every llm_chat request's timings (queued_s, first_token_s, total_s, wall submit/end), and
exits 0; an AiosError is one line on stderr and exit 1. AIOS_AGENT_MAX_TOKENS=N in the
environment caps every request at N tokens (short runs in tests and `--quick`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from libaios import calls, sdk
from libaios.errors import AiosError


@dataclass
class Manifest:
    name: str
    description: str = ""
    tools: list[str] = field(default_factory=list)   # the allowlist it asks for at spawn
    memory_quota: int | None = None                   # bytes; None: the daemon's default
    storage_quota: int | None = None
    priority: int = 0
    context_strategy: str = "truncate"                # truncate | summarize
    max_steps: int = 4                                # plan steps acted on, at most
    max_tokens: int = 64                              # per llm_chat request
    tool_rounds: int = 2                              # model → tool → model rounds per step

    def spawn_args(self) -> dict:
        """spawn_agent keywords that give an agent this manifest's permissions."""
        return {"name": self.name, "priority": self.priority or None, "tools": self.tools or None,
                "memory_quota": self.memory_quota, "storage_quota": self.storage_quota,
                "context_strategy": self.context_strategy}


class Agent:
    manifest = Manifest(name="agent")

    def __init__(self, client: Any = None):
        self.sys = calls if client is None else calls.bind(client)
        self.client = client
        self.requests: list[dict] = []   # one entry per llm_chat: timings and wall clock
        self.events: list[str] = []
        self.started = time.time()

    # ---- the syscalls an agent leans on, with bookkeeping --------------------------------
    def chat(self, messages: list[dict], *, max_tokens: int | None = None, tools: list | None = None,
             **kw: Any) -> str:
        """One llm_chat request; its timings are kept for AIOS_TIMINGS. Returns the text."""
        return self.chat_full(messages, max_tokens=max_tokens, tools=tools, **kw)["text"]

    def chat_full(self, messages: list[dict], *, max_tokens: int | None = None, tools: list | None = None,
                  **kw: Any) -> dict:
        max_tokens = max_tokens or self.manifest.max_tokens
        cap = int(os.environ.get("AIOS_AGENT_MAX_TOKENS") or 0)  # short runs: make run --quick, tests
        if cap > 0:
            max_tokens = min(max_tokens, cap)
        submit = time.time()
        reply = self.sys.llm_chat(messages, max_tokens=max_tokens,
                                  temperature=kw.pop("temperature", 0.0), tools=tools, **kw)
        end = time.time()
        t = reply.get("timings") or {}
        usage = reply.get("usage") or {}
        self.requests.append({"submit": submit, "end": end, "queued_s": t.get("queued_s"),
                              "first_token_s": t.get("first_token_s"), "total_s": t.get("total_s"),
                              "prompt_tokens": usage.get("prompt_tokens"),
                              "completion_tokens": usage.get("completion_tokens"),
                              "text": reply.get("text") or ""})  # each step's output, for Table 4
        return reply

    def tool(self, name: str, args: dict, *, timeout: float | None = 30.0) -> Any:
        result = self.sys.tool_call(name, args, timeout=timeout)
        self.log(f"tool {name} ok")
        # the tools manager wraps results as {"tool", "untrusted": true, "content"}: the agent's
        # code wants the content; the untrusted mark matters when it goes back to the model
        if isinstance(result, dict) and result.get("untrusted") and "content" in result:
            return result["content"]
        return result

    def log(self, message: str, level: str = "info") -> None:
        self.events.append(message)
        try:
            self.sys.log_event(message[:4000], level=level)
        except AiosError:  # logging must never end the agent's run
            pass

    # ---- the loop --------------------------------------------------------------------------
    def plan(self, task: str) -> list[str]:
        # the plan is one of the agent's requests: sent through chat_full so that it is timed
        text = self.chat(sdk.plan_messages(task, self.manifest.max_steps))
        return sdk.parse_plan(text, self.manifest.max_steps)

    def act(self, step: str, task: str, observations: list[str]) -> str:
        """One step: ask the model, run the tool calls it makes (bounded rounds), return what
        was observed. A failing or malformed tool call is reported back to the model."""
        schemas = self.tool_schemas()
        msgs = [{"role": "system", "content": f"You are {self.manifest.name}: {self.manifest.description}"},
                {"role": "user", "content": f"Task: {task}\nDone so far: {' | '.join(observations) or 'nothing'}"
                                            f"\nNow do this step: {step}"}]
        reply: dict = {}
        for _ in range(max(self.manifest.tool_rounds, 1)):
            reply = self.chat_full(msgs, tools=schemas or None)
            calls_ = reply.get("tool_calls") or []
            if not calls_:
                break
            msgs.append({"role": "assistant", "content": reply.get("text") or "", "tool_calls": calls_})
            for tc in calls_:
                msgs.append({"role": "tool", "content": self._run_tool_call(tc)})
        return (reply.get("text") or "").strip()

    def _run_tool_call(self, tc: dict) -> str:
        fn = tc.get("function", tc) if isinstance(tc, dict) else {}
        name, args = fn.get("name"), fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args or "{}")
            except ValueError:
                return f"error: arguments of {name} are not JSON"
        if not isinstance(name, str) or not isinstance(args, dict):
            return "error: malformed tool call"
        try:
            return json.dumps(self.tool(name, args), default=str)[:4000]
        except AiosError as exc:
            return f"error: {exc.code}: {exc.message}"

    def tool_schemas(self) -> list:
        if not self.manifest.tools:
            return []
        try:
            return [s for s in self.sys.tool_list()
                    if (s.get("function", s).get("name") if isinstance(s, dict) else None) in self.manifest.tools]
        except AiosError:
            return []

    def observe(self, observations: list[str], result: str) -> bool:
        """Keep the result; return True to stop early."""
        observations.append(result)
        return False

    def finish(self, task: str, observations: list[str]) -> str:
        return observations[-1] if observations else ""

    def run(self, task: str) -> str:
        """plan → act → observe, at most manifest.max_steps steps."""
        steps = self.plan(task) or [task]
        self.log(f"plan: {len(steps)} steps")
        observations: list[str] = []
        for i, step in enumerate(steps[: self.manifest.max_steps], 1):
            result = self.act(step, task, observations)
            self.log(f"step {i}: {step[:200]}")
            if self.observe(observations, result):
                break
        return self.finish(task, observations)

    # ---- running as a program ------------------------------------------------------------
    def timings(self) -> dict:
        return {"agent": self.manifest.name, "start": self.started, "end": time.time(),
                "requests": self.requests}

    @classmethod
    def main(cls, argv: list[str] | None = None) -> int:
        args = sys.argv[1:] if argv is None else argv
        task = " ".join(args).strip() or cls.default_task()
        agent = cls()
        try:
            answer = agent.run(task)
        except AiosError as exc:
            print(f"{cls.manifest.name}: {exc.code}: {exc.message}", file=sys.stderr)
            return 1
        print(answer.strip() or "(no answer)", flush=True)
        print("AIOS_TIMINGS " + json.dumps(agent.timings()), file=sys.stderr, flush=True)
        return 0

    @classmethod
    def default_task(cls) -> str:
        return "Say hello."

    def manifest_dict(self) -> dict:
        return asdict(self.manifest)


def parse_timings(text: str) -> list[dict]:
    """Every AIOS_TIMINGS record in an output (for make run and the perf scripts)."""
    out = []
    for line in text.splitlines():
        i = line.find("AIOS_TIMINGS ")
        if i >= 0:
            try:
                out.append(json.loads(line[i + len("AIOS_TIMINGS "):]))
            except ValueError:
                continue
    return out
