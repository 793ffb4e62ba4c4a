"""The caller of a request and the four scopes a caller can hold."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PREDICT, FEEDBACK, MONITOR, ADMIN = "predict", "feedback", "monitor", "admin"
SCOPES: tuple[str, ...] = (PREDICT, FEEDBACK, MONITOR, ADMIN)
TOKEN_PREFIX = "cxr:"  # how a scope is named in a sign-on token's scope/scp/roles claim, e.g. cxr:predict


def parse_scopes(text: str | Iterable[str]) -> frozenset[str]:
    """``predict,feedback`` (or a list) as a set of scopes; ValueError naming the unknown ones."""
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = {item.strip() for item in items if item.strip()}
    unknown = sorted(scopes - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; use any of {', '.join(SCOPES)}")
    if not scopes:
        raise ValueError(f"no scope given; use any of {', '.join(SCOPES)}")
    return frozenset(scopes)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: ``name`` is the key's name or the token's subject, never the credential itself.
    ``kind`` is key, token or open (access control off: loopback, or CXR_ALLOW_UNAUTHENTICATED)."""

    name: str
    scopes: frozenset[str]
    kind: str

    @property
    def identity(self) -> str | None:
        """What the audit record's ``caller`` column holds: nothing for an anonymous caller."""
        return None if self.kind == "open" else self.name[:128]


OPEN_CALLER = Caller("anonymous", frozenset(SCOPES), "open")
