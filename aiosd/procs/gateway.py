"""The gateway process: a supervised manager that serves the OpenAI-compatible HTTP API.

The kernel starts it when `cfg.http` is set. The main thread is an ordinary manager
(hello, heartbeats, kernel events); uvicorn runs the ASGI app (aiosd/gateway/app.py) on
its own asyncio loop in a second thread. It announces itself only once the socket is
bound, so `aiosd start --http ...` returning means the API answers. If uvicorn stops,
the process exits and the kernel restarts it; the agents it carried end with it.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from aiosd.config import Config, parse_http
from aiosd.procs.base import Manager, run_manager

log = logging.getLogger("aiosd")


def model_name(cfg: Config) -> str:
    base = os.path.basename(str(cfg.model).rstrip("/"))
    return base[:-5] if base.endswith(".gguf") else base


class GatewayManager(Manager):
    name = "gateway"

    def setup(self) -> None:
        import uvicorn

        from aiosd.gateway.app import build
        host, port = parse_http(self.cfg.http)
        self.app = build(self.cfg.home, model_name(self.cfg))
        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", access_log=False,
                                lifespan="on", loop="asyncio", http="h11", ws="none",
                                timeout_keep_alive=30, backlog=1024)
        self.server = uvicorn.Server(config)
        # uvicorn installs no signal handlers off the main thread: SIGTERM stays ours
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                log.error("gateway: cannot serve on %s:%d (port taken, or no such address)", host, port)
                raise SystemExit(1)
            time.sleep(0.01)
        self.loop = self.server_loop()
        log.info("gateway: serving the OpenAI API on http://%s:%d/v1", host, port)

    def server_loop(self):
        gw = self.app.state.gateway
        return gw.watcher.get_loop()

    def on_event(self, event: dict) -> None:
        if event.get("event") == "agent_exit" and "aid" in event:
            gw = self.app.state.gateway
            self.loop.call_soon_threadsafe(gw.forget_aid, int(event["aid"]))

    def tick(self) -> float | None:
        if not self.thread.is_alive():  # uvicorn gave up: exit, and let the kernel restart us
            log.error("gateway: the HTTP server stopped")
            self.stop()
        return None

    def shutdown(self) -> None:
        self.server.should_exit = True
        self.thread.join(5.0)


if __name__ == "__main__":
    run_manager(GatewayManager)
