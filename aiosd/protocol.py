"""The wire: msgpack bodies on ZeroMQ frames, and shared-memory segments for big payloads.

A payload over `threshold` bytes travels as a `ShmRef` (msgpack ext type 1): the sender
writes a /dev/shm segment, the one receiver that resolves it reads it and unlinks it.
"""

from __future__ import annotations

import mmap
import os
import secrets
import threading
from dataclasses import dataclass
from typing import Any

import msgpack

from aiosd.errors import AiosError

SHM_EXT = 1
SHM_DIR = "/dev/shm"
SHM_PREFIX = "aios-"


@dataclass(frozen=True)
class ShmRef:
    name: str
    size: int

    def path(self) -> str:
        return os.path.join(SHM_DIR, self.name)


def _default(obj: Any) -> Any:
    if isinstance(obj, ShmRef):
        return msgpack.ExtType(SHM_EXT, msgpack.packb([obj.name, obj.size]))
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    if hasattr(obj, "__fspath__"):
        return os.fspath(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == SHM_EXT:
        name, size = msgpack.unpackb(data)
        if not isinstance(name, str) or not name.startswith(SHM_PREFIX) or "/" in name:
            raise AiosError("EPROTO", "bad shared-memory reference")
        return ShmRef(name, int(size))
    raise AiosError("EPROTO", f"unknown msgpack extension type {code}")


_local = threading.local()  # a Packer per thread: msgpack.packb builds one per call


def pack(obj: Any) -> bytes:
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(default=_default, use_bin_type=True)
    return packer.pack(obj)  # (a failed pack leaves the packer empty for the next)


def pack_msg(obj: Any, threshold: int) -> bytes:
    """Pack a message, moving big payloads to shared memory only when the body is big
    (walking every message for payloads would cost more than the round trip itself)."""
    body = pack(obj)
    if len(body) > threshold:
        body = pack(offload(obj, threshold))
    return body


def unpack(data: bytes, max_size: int = 1 << 20) -> Any:
    """Decode one body; anything malformed is an AiosError(EPROTO), never a crash."""
    return unpack_refs(data, max_size)[0]


# Extensions decoded so far, in every thread: a decode that saw this move may hold
# shared-memory references. (Another thread's decode may move it meanwhile: that costs a
# needless walk of the message, never a missed reference; one counter instead of a hook
# made per call keeps a 1 KiB decode at the cost of msgpack itself.)
_exts_seen = [0]


def _counting_hook(code: int, payload: bytes) -> Any:
    _exts_seen[0] += 1
    return _ext_hook(code, payload)


def unpack_refs(data: bytes, max_size: int = 1 << 20) -> tuple[Any, bool]:
    """Decode one body; also say whether it holds shared-memory references to resolve."""
    if len(data) > max_size:
        raise AiosError("EPROTO", f"frame of {len(data)} bytes is over the {max_size}-byte limit")
    before = _exts_seen[0]
    try:
        return msgpack.unpackb(data, ext_hook=_counting_hook, raw=False, strict_map_key=False), \
            _exts_seen[0] != before
    except AiosError:
        raise
    except Exception as exc:  # msgpack raises many types on garbage
        raise AiosError("EPROTO", f"body is not valid msgpack ({type(exc).__name__})") from None


# Never the first byte of a msgpack object, so it marks a frame holding several bodies back
# to back: the kernel and the busy managers send what one pass of their loop produced for
# one peer as one frame (one send, one wake-up, one receive instead of one per message).
BATCH = b"\xc1"


def join_bodies(bodies: list[bytes]) -> bytes:
    return bodies[0] if len(bodies) == 1 else BATCH + b"".join(bodies)


def unpack_frame(data: bytes, max_size: int = 1 << 20) -> tuple[list[Any], bool]:
    """Decode a frame of one body or a batch of them; also say whether any holds shared-memory
    references. Malformed input is an AiosError(EPROTO), as in unpack_refs."""
    if data[:1] != BATCH:
        msg, refs = unpack_refs(data, max_size)
        return [msg], refs
    if len(data) > max_size:
        raise AiosError("EPROTO", f"frame of {len(data)} bytes is over the {max_size}-byte limit")
    before = _exts_seen[0]
    unpacker = msgpack.Unpacker(ext_hook=_counting_hook, raw=False, strict_map_key=False, max_buffer_size=len(data) + 1)
    unpacker.feed(memoryview(data)[1:])
    unpacker.feed(b"\xc0")  # a nil after the last body: left over as itself only if that body was whole
    try:
        msgs = list(unpacker)
    except AiosError:
        raise
    except Exception as exc:
        raise AiosError("EPROTO", f"batch is not valid msgpack ({type(exc).__name__})") from None
    if not msgs or msgs.pop() is not None:
        raise AiosError("EPROTO", "batch ends inside a body")
    return msgs, _exts_seen[0] != before


def shm_put(data: bytes) -> ShmRef:
    name = SHM_PREFIX + secrets.token_hex(12)
    fd = os.open(os.path.join(SHM_DIR, name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, max(len(data), 1))
        with mmap.mmap(fd, max(len(data), 1)) as m:
            m[: len(data)] = data
    finally:
        os.close(fd)
    return ShmRef(name, len(data))


def shm_take(ref: ShmRef, max_size: int | None = None) -> bytes:
    """Read a segment and unlink it (the receiver owns it from here on)."""
    if max_size is not None and ref.size > max_size:
        shm_discard(ref)
        raise AiosError("E2BIG", f"payload of {ref.size} bytes is over the {max_size}-byte limit")
    try:
        fd = os.open(ref.path(), os.O_RDONLY)
    except FileNotFoundError:
        raise AiosError("EPROTO", f"shared-memory segment {ref.name} does not exist") from None
    try:
        st = os.fstat(fd)
        if st.st_size < ref.size:
            raise AiosError("EPROTO", "shared-memory segment is shorter than announced")
        if ref.size == 0:
            return b""
        with mmap.mmap(fd, ref.size, prot=mmap.PROT_READ) as m:
            return bytes(m[: ref.size])
    finally:
        os.close(fd)
        shm_discard(ref)


def shm_discard(ref: ShmRef) -> None:
    try:
        os.unlink(ref.path())
    except FileNotFoundError:
        pass


def offload(obj: Any, threshold: int) -> Any:
    """Replace every bytes/str over `threshold` inside obj with a ShmRef."""
    if isinstance(obj, (bytes, bytearray, memoryview)) and len(obj) > threshold:
        return shm_put(bytes(obj))
    if isinstance(obj, str) and len(obj) > threshold:
        return shm_put(b"\x00S" + obj.encode())  # marks text, so it comes back as str
    if isinstance(obj, dict):
        return {k: offload(v, threshold) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [offload(v, threshold) for v in obj]
    return obj


def resolve(obj: Any, max_size: int | None = None) -> Any:
    """Replace every ShmRef inside obj by its content (and unlink the segment)."""
    if isinstance(obj, ShmRef):
        data = shm_take(obj, max_size)
        return data[2:].decode() if data[:2] == b"\x00S" else data
    if isinstance(obj, dict):
        return {k: resolve(v, max_size) for k, v in obj.items()}
    if isinstance(obj, list):
        return [resolve(v, max_size) for v in obj]
    return obj


def discard(obj: Any) -> None:
    """Unlink every segment referenced inside obj (a request that was refused)."""
    if isinstance(obj, ShmRef):
        shm_discard(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            discard(v)
    elif isinstance(obj, list):
        for v in obj:
            discard(v)


def ok(req_id: Any, result: Any) -> dict:
    return {"id": req_id, "ok": True, "result": result}


def err(req_id: Any, code: str, message: str) -> dict:
    return {"id": req_id, "ok": False, "error": {"code": code, "message": message}}
