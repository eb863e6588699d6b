"""The node's WireGuard key pair: X25519, the private key in the state directory (mode 0600), never logged
and never in the datastore; only the public key leaves the node (node record, `tortie status`)."""
from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

FILE = "wireguard.key"


def key_path(state_dir: Path) -> Path:
    return state_dir / FILE


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def generate() -> str:
    """A new private key, base64 (the form `wg genkey` prints)."""
    return _b64(X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))


def public_key(private: str) -> str:
    raw = X25519PrivateKey.from_private_bytes(base64.b64decode(private)).public_key()
    return _b64(raw.public_bytes(Encoding.Raw, PublicFormat.Raw))


def write(path: Path, private: str) -> None:
    """Atomically, created 0600 (never readable by others, not even for a moment)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_or_create(state_dir: Path) -> str:
    """The node's private key, generated on first start. Raises ValueError for a file that holds no key."""
    path = key_path(state_dir)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        private = generate()
        write(path, private)
        return private
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{path}: not a WireGuard private key (32 bytes, base64)")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return text


def rotate(state_dir: Path) -> str:
    """Replaces the key pair (the daemon picks the new one up: `tortie wireguard rotate`); the new public key."""
    private = generate()
    write(key_path(state_dir), private)
    return public_key(private)
