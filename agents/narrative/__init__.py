"""The Narrative Agent of the paper's evaluation: outline, then write (two llm_chat requests)."""

from __future__ import annotations

from libaios.agent import Agent, Manifest


class NarrativeAgent(Agent):
    manifest = Manifest(name="narrative", description="writes short stories from a premise", max_tokens=64)

    def run(self, task: str) -> str:
        outline = self.chat([
            {"role": "system", "content": "You outline short stories as three numbered beats."},
            {"role": "user", "content": f"Outline a very short story about: {task}"},
        ])
        self.log("outlined")
        story = self.chat([
            {"role": "system", "content": "You are a novelist. Write vivid, compact prose."},
            {"role": "user", "content": f"Premise: {task}\nOutline:\n{outline.strip()}\n"
                                        "Write the story in one paragraph."},
        ], max_tokens=96)
        self.log("written")
        return story.strip()

    @classmethod
    def default_task(cls) -> str:
        return "A lighthouse keeper finds a message in a bottle."
