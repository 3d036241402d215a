"""The manager skeleton's loop (aiosd/procs/base.py) against a real ROUTER socket standing
where the kernel's backend would be: answers a manager gives outside a handler (from
`tick()`, as storage does after a group commit) leave at once, not on the next message."""

from __future__ import annotations

import threading
from typing import Any

import zmq

from aiosd import protocol
from aiosd.config import Config
from aiosd.procs.base import DEFERRED, Manager, Request


class DeferringManager(Manager):
    """Queues every request and answers it from tick(), like a group-committing writer."""
    name = "deferring"
    batch_replies = True

    def setup(self) -> None:
        self.todo: list[Any] = []

    def handle_echo(self, req: Request) -> Any:
        self.todo.append((req.id, req.args))
        return DEFERRED

    def tick(self) -> float | None:
        while self.todo:
            rid, args = self.todo.pop(0)
            self.reply(rid, args)
        return None


def test_answers_given_in_tick_leave_without_waiting_for_another_message(tmp_path):
    cfg = Config(home=tmp_path, heartbeat_s=30.0)  # nothing else would wake the loop for 30 s
    cfg.run_dir.mkdir()
    ctx = zmq.Context()
    back = ctx.socket(zmq.ROUTER)
    back.setsockopt(zmq.LINGER, 0)
    back.bind(cfg.endpoint("backend"))
    mgr = DeferringManager(cfg)
    thread = threading.Thread(target=mgr.serve, daemon=True)
    thread.start()
    try:
        assert back.poll(10_000), "the manager never said hello"
        ident, raw = back.recv_multipart()
        assert any(m.get("hello") == "deferring" for m in protocol.unpack_frame(raw, 1 << 20)[0])
        for i in range(3):
            back.send_multipart([ident, protocol.pack({"id": i, "call": "echo", "args": {"n": i}, "aid": 0})])
            answers: list[dict] = []
            while not any(a.get("id") == i for a in answers):
                assert back.poll(2_000), f"answer {i} was held back until the next message"
                answers += [m for m in protocol.unpack_frame(back.recv_multipart()[1], 1 << 20)[0]
                            if isinstance(m, dict)]
            (answer,) = [a for a in answers if a.get("id") == i]
            assert answer["ok"] and answer["result"] == {"n": i}
    finally:
        mgr.stop()
        back.send_multipart([ident, protocol.pack({"hb": 1})])  # wake the poll so it sees the stop
        thread.join(10)
        back.close(0)
        ctx.term()
    assert not thread.is_alive()
