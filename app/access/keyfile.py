"""The API key file: one JSON object per line, ``{"name", "scopes", "hash", "created_at"}``. Only a SHA-256 of
each key is stored. No slow KDF (bcrypt, argon2) is needed: keys are 256 random bits (``secrets``), so a leaked
file cannot be brute-forced the way a human password can, and a per-request KDF would cost milliseconds.

``KeyFile`` is the service's view of the file: it re-reads it whenever its size, modification time or inode
changes (checked on every lookup, one ``stat``), so a revoked key stops working without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from app.access.caller import Caller, parse_scopes

log = logging.getLogger("cxr.access")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
KEY_PREFIX = "cxr_"  # recognisable to secret scanners; the rest is 32 random bytes, URL-safe base64


@dataclass(frozen=True, slots=True)
class KeyEntry:
    name: str
    scopes: frozenset[str]
    digest: bytes  # SHA-256 of the key
    created_at: str = ""

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "scopes": sorted(self.scopes), "hash": "sha256:" + self.digest.hex(),
                           "created_at": self.created_at}, sort_keys=True)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest_of(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"key name {name!r}: 1-64 characters, letters, digits and . _ @ -, e.g. ris-gateway")
    return name


def parse_line(line: str) -> KeyEntry:
    data = json.loads(line)
    kind, _, hexdigest = str(data["hash"]).partition(":")
    if kind != "sha256" or len(hexdigest) != 64:
        raise ValueError("hash must be sha256:<64 hex digits>")
    return KeyEntry(check_name(str(data["name"])), parse_scopes(data["scopes"]), bytes.fromhex(hexdigest),
                    str(data.get("created_at", "")))


def read_entries(path: Path) -> list[KeyEntry]:
    """Every valid entry; a malformed line is logged (by number, never its content) and skipped."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entries.append(parse_line(line))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("access: %s line %d skipped: %s", path, number, exc)
    return entries


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialises cxr-keys runs on the same file (a lock file beside it: the key file itself is replaced)."""
    lock = path.with_name(path.name + ".lock")
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _write_all(path: Path, entries: list[KeyEntry]) -> None:
    """Atomic replace, owner-only permissions: a reader sees the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.writelines(entry.to_json() + "\n" for entry in entries)
    os.replace(temporary, path)


def add_key(path: Path, name: str, scopes: frozenset[str]) -> str:
    """Creates a key for ``name`` and stores its hash; returns the key (shown once, never stored)."""
    check_name(name)
    with _locked(path):
        entries = read_entries(path) if path.exists() else []
        if any(entry.name == name for entry in entries):
            raise ValueError(f"a key named {name!r} exists; revoke it first or choose another name")
        key = new_key()
        created = datetime.now(UTC).isoformat(timespec="seconds")
        _write_all(path, [*entries, KeyEntry(name, scopes, digest_of(key), created)])
    return key


def revoke_key(path: Path, name: str) -> bool:
    """Removes the named key; False when there is none of that name."""
    with _locked(path):
        entries = read_entries(path) if path.exists() else []
        kept = [entry for entry in entries if entry.name != name]
        if len(kept) == len(entries):
            return False
        _write_all(path, kept)
    return True


def match(entries: list[KeyEntry], digest: bytes) -> KeyEntry | None:
    """Compares with every entry (no early exit), each in constant time."""
    found = None
    for entry in entries:
        if hmac.compare_digest(entry.digest, digest):
            found = entry
    return found


class KeyFile:
    """The key file as the service sees it, current on every lookup."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[KeyEntry] = []
        self._signature: tuple[int, int, int] | None = None
        self._missing_logged = False
        self.refresh()

    def refresh(self, force: bool = False) -> None:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            if not self._missing_logged:  # fail closed: no key from this file works while it is gone
                log.error("access: CXR_API_KEYS_FILE %s cannot be read (%s); its keys are refused until it can",
                          self.path, type(exc).__name__)
                self._missing_logged = True
            self.entries, self._signature = [], None
            return
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if signature == self._signature and not force:
            return
        try:
            entries = read_entries(self.path)
        except (OSError, UnicodeDecodeError) as exc:
            log.error("access: CXR_API_KEYS_FILE %s cannot be read (%s)", self.path, type(exc).__name__)
            self.entries, self._signature = [], None
            return
        self.entries, self._signature, self._missing_logged = entries, signature, False
        if entries:
            log.info("access: %d key(s) loaded from %s", len(entries), self.path)
        else:
            log.warning("access: %s holds no keys, so API keys are refused; add one: cxr-keys add NAME "
                        "--scopes predict --file %s", self.path, self.path)

    def lookup(self, key: str) -> Caller | None:
        self.refresh()
        entry = match(self.entries, digest_of(key))
        return Caller(entry.name, entry.scopes, "key") if entry is not None else None
