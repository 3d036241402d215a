"""The agent perf/scale.py starts N times: 3 llm_chat requests plus memory and storage calls."""

from __future__ import annotations

import sys

from libaios.agent import Agent, Manifest


class ScaleAgent(Agent):
    manifest = Manifest(name="scale", description="load generator", max_tokens=8)

    def run(self, task: str) -> str:
        self.sys.mem_write(f"task: {task}")
        version = self.sys.sto_write("notes/task.txt", task)
        out = []
        for i in range(3):
            out.append(self.chat([{"role": "user", "content": f"{task} (part {i + 1}) Answer in a few words."}]))
            self.sys.mem_write(out[-1] or "-", role="assistant")
        assert self.sys.sto_read("notes/task.txt") == task.encode(), "storage read back differs"
        assert len(self.sys.mem_read(last=4)) == 4, "memory lost records"
        return f"v{version}: " + " | ".join(s.strip() for s in out)


if __name__ == "__main__":
    sys.exit(ScaleAgent.main())
