"""The OpenAI-compatible HTTP gateway: keys, request/response shapes, the ASGI app.

The process that serves it is aiosd/procs/gateway.py, a supervised manager started when
`cfg.http` is set. Each API key is an agent (aid, priority, tool allowlist) attached to
that process; its requests go through the kernel's syscall path as that agent.
"""
