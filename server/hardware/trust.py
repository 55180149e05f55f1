"""Where the planner keeps what it computed, and how it knows it computed it.

Converted models and their guard verdicts are device state, not model content: they live in a
directory the server owns (`$XDG_CACHE_HOME/edgefleet`, else `~/.cache/edgefleet`), never
inside a model repository that a bundle, a copy or a user can fill. Each verdict is also signed
with a device-local key (HMAC-SHA256; the key file is created once, mode 0600, beside the
default cache), so a verdict copied from another device or edited by hand is not trusted even
when a cache directory is configured somewhere shared: the conversion is done again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

KEY_FILENAME = "device.key"
KEY_BYTES = 32


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgefleet"


def owned_dir(path: Path) -> Path:
    """`path`, created private to this user; a path that cannot be written falls back to a
    private directory under the temp directory."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"edgefleet-cache-{os.getuid()}"
    fallback.mkdir(parents=True, exist_ok=True, mode=0o700)
    logger.info("%s is not writable; the planner caches in %s", path, fallback)
    return fallback


def device_key(key_file: Path | None = None) -> bytes:
    """This device's signing key, created on first use (never copied with a cache)."""
    path = key_file or owned_dir(default_cache_dir()) / KEY_FILENAME
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(KEY_BYTES) + "\n")
    return bytes.fromhex(path.read_text(encoding="ascii").strip())


def sign(record: dict[str, Any], key: bytes) -> dict[str, Any]:
    body = {name: value for name, value in record.items() if name != "mac"}
    return {**body, "mac": _mac(body, key)}


def verified(record: dict[str, Any], key: bytes) -> bool:
    mac = record.get("mac")
    body = {name: value for name, value in record.items() if name != "mac"}
    return isinstance(mac, str) and hmac.compare_digest(mac, _mac(body, key))


def _mac(body: dict[str, Any], key: bytes) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()
