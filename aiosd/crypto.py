"""encrypt_data / decrypt_data: AES-GCM with per-agent keys that never leave the kernel.

Each agent name's key is derived (HKDF-SHA256) from one master key kept in
AIOS_HOME/master.key (mode 0600), so nothing per agent needs storing and the same agent
run again can read what it sealed before. A sealed blob names its owner (bound in as
associated data), which is how the kernel knows whose grant a reader needs.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aiosd.errors import AiosError

MAGIC = b"AIOS1"


def load_master_key(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        key = AESGCM.generate_key(bit_length=256)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
        return key


def agent_key(master: bytes, name: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"aiosd-agent-key:" + name.encode()).derive(master)


def seal(master: bytes, owner: str, data: bytes) -> bytes:
    nonce = os.urandom(12)
    who = owner.encode()
    ct = AESGCM(agent_key(master, owner)).encrypt(nonce, data, MAGIC + who)
    return MAGIC + struct.pack(">H", len(who)) + who + nonce + ct


def owner_of(blob: bytes) -> str:
    if len(blob) < len(MAGIC) + 2 or not blob.startswith(MAGIC):
        raise AiosError("EINVAL", "not data sealed by encrypt_data")
    (n,) = struct.unpack(">H", blob[5:7])
    try:
        return blob[7:7 + n].decode()
    except UnicodeDecodeError:
        raise AiosError("EINVAL", "not data sealed by encrypt_data") from None


def open_sealed(master: bytes, blob: bytes) -> bytes:
    owner = owner_of(blob)
    n = len(owner.encode())
    nonce, ct = blob[7 + n:19 + n], blob[19 + n:]
    try:
        return AESGCM(agent_key(master, owner)).decrypt(nonce, ct, MAGIC + owner.encode())
    except (InvalidTag, ValueError):
        raise AiosError("EINVAL", "cannot decrypt: the data was tampered with or sealed by another key") from None
