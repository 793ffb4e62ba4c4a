"""``AccessControl``: from the presented credential to a ``Caller`` (or a 401), for one app.

Order: API keys (the key file, then the deprecated flat CXR_API_KEYS list; a SHA-256 and constant-time
compares), then, for what looks like a JWT, the hospital's sign-on provider. Secure by default: listening
beyond loopback with nothing configured refuses every protected route unless CXR_ALLOW_UNAUTHENTICATED=true.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging

from app.access import keyfile
from app.access.caller import OPEN_CALLER, SCOPES, Caller
from app.access.oidc import OidcVerifier, looks_like_jwt
from app.access.ratelimit import rate_limiter
from app.errors import UnauthorizedError
from app.rundir import run_dir
from app.settings import Settings

log = logging.getLogger("cxr.access")

HOW_TO_CONFIGURE = (
    "access control is not configured and the service listens on {host} (CXR_HOST), beyond this machine: "
    "create an API key (cxr-keys add NAME --scopes predict --file keys.jsonl) and set CXR_API_KEYS_FILE, "
    "or set CXR_OIDC_JWKS, CXR_OIDC_ISSUER and CXR_OIDC_AUDIENCE for hospital sign-on tokens, "
    "or set CXR_ALLOW_UNAUTHENTICATED=true if the network in front of it is the access control")


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def legacy_label(key: str) -> str:
    """Flat CXR_API_KEYS entries carry no names: ``key-<8 hex digits of its SHA-256>`` (stable, not the key)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


class AccessControl:
    def __init__(self, settings: Settings) -> None:
        self.legacy = [keyfile.KeyEntry(legacy_label(key), frozenset(SCOPES), keyfile.digest_of(key))
                       for key in settings.api_keys]
        self.key_file = keyfile.KeyFile(settings.api_keys_file) if settings.api_keys_file else None
        self.oidc = OidcVerifier(settings.oidc_jwks, issuer=str(settings.oidc_issuer),
                                 audience=str(settings.oidc_audience), roles_claim=settings.oidc_roles_claim,
                                 cooldown_s=settings.oidc_jwks_cooldown_s) \
            if settings.oidc_jwks else None
        self.limiter = rate_limiter(settings.rate_limit, run_dir())
        self.protect_metrics = settings.protect_metrics
        self.enforced = bool(self.legacy or self.key_file or self.oidc)
        self.exposed = exposed = not is_loopback(settings.host)
        # nothing configured, beyond loopback, not explicitly allowed: refuse (the message says how to fix it)
        self.refusal = HOW_TO_CONFIGURE.format(host=settings.host) \
            if not self.enforced and exposed and not settings.allow_unauthenticated else None
        self.open = not self.enforced and self.refusal is None

    def log_start(self) -> None:
        """One line per notable state, once at start-up."""
        if self.legacy:
            log.warning("access: CXR_API_KEYS is deprecated (every key holds every scope and is kept in clear); "
                        "move to named, scoped keys: cxr-keys add NAME --scopes ... --file PATH, "
                        "then CXR_API_KEYS_FILE=PATH")
        if self.refusal is not None:
            log.error("access: %s; protected routes answer 401 until then", self.refusal)
        elif self.open and self.exposed:
            log.warning("access: CXR_ALLOW_UNAUTHENTICATED=true: anyone who reaches the port may predict, post "
                        "feedback, read monitoring and reload models")

    def reload(self) -> None:
        """Re-reads the key file now (it is also re-read whenever it changes)."""
        if self.key_file is not None:
            self.key_file.refresh(force=True)

    def lookup_key(self, credential: str) -> Caller | None:
        """The caller an API key belongs to, or None (no early exit, constant-time compares)."""
        found = self.key_file.lookup(credential) if self.key_file is not None else None
        if found is None and self.legacy:
            entry = keyfile.match(self.legacy, keyfile.digest_of(credential))
            found = Caller(entry.name, entry.scopes, "key") if entry is not None else None
        return found

    def needs_token_check(self, credential: str | None) -> bool:
        return self.oidc is not None and credential is not None and looks_like_jwt(credential)

    def authenticate_key(self, credential: str | None) -> Caller | None:
        """Everything but the sign-on token (which may need a network fetch: see ``verify_token``).
        Returns None only when the credential should go on to the token check."""
        if self.refusal is not None:
            raise UnauthorizedError(self.refusal)
        if self.open:
            return OPEN_CALLER
        if credential is None:
            raise UnauthorizedError("missing credentials: send 'Authorization: Bearer <API key or sign-on "
                                    "token>' or 'X-API-Key: <API key>'")
        caller = self.lookup_key(credential)
        if caller is not None:
            return caller
        if self.needs_token_check(credential):
            return None
        raise UnauthorizedError("invalid API key" + (" or sign-on token" if self.oidc is not None else ""))

    def cached_token(self, credential: str) -> Caller | None:
        """A sign-on token verified before and not expired (no signature check, no thread hop)."""
        return self.oidc.cached(credential) if self.oidc is not None else None

    def verify_token(self, credential: str) -> Caller:
        assert self.oidc is not None
        return self.oidc.verify(credential)

    def label_of(self, credential: str | None) -> str:
        """The audit's ``client`` label of a request whose caller was not established (refused early)."""
        if self.open:
            return "anonymous"
        if credential is None:
            return "no-key"
        caller = self.lookup_key(credential)
        return caller.name[:64] if caller is not None else "invalid-key"
