"""Identity: per-agent secret tokens, the root token file, and the ZAP handler.

Connections authenticate once with ZeroMQ PLAIN (username = aid or "root", password =
token). The ZAP handler never refuses a handshake: an unknown or wrong token is given
the User-Id "anon", so such a client gets an EACCES reply to every request instead of a
silent hang. Every frame then carries the User-Id the kernel maps to an aid.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

import zmq

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ANON = b"anon"


class TokenStore:
    def __init__(self) -> None:
        self.root = secrets.token_hex(32)
        self.agents: dict[int, str] = {}

    def issue(self, aid: int) -> str:
        tok = secrets.token_hex(32)
        self.agents[aid] = tok
        return tok

    def revoke(self, aid: int) -> None:
        self.agents.pop(aid, None)

    def user_id(self, username: bytes, password: bytes) -> bytes:
        try:
            user, given = username.decode(), password.decode()
        except UnicodeDecodeError:
            return ANON
        if user == "root":
            return b"root" if hmac.compare_digest(given, self.root) else ANON
        if user.isdigit():
            tok = self.agents.get(int(user))
            if tok and hmac.compare_digest(given, tok):
                return f"aid:{int(user)}".encode()
        return ANON

    def write_root_file(self, run_dir: Path) -> None:
        path = run_dir / "root.token"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.root)
        os.replace(tmp, path)


def answer_zap(sock: zmq.Socket, tokens: TokenStore) -> None:
    """Answer one ZAP request waiting on sock (RFC 27)."""
    frames = sock.recv_multipart()
    if len(frames) < 6:
        return
    version, request_id, _domain, _address, _identity, mechanism = frames[:6]
    creds = frames[6:]
    user = ANON
    if mechanism == b"PLAIN" and len(creds) == 2:
        user = tokens.user_id(creds[0], creds[1])
    sock.send_multipart([version, request_id, b"200", b"OK", user, b""])
