"""Who may use the HTTP side: bearer tokens and HTTP Basic users from `web.auth`.

Every route except `/health` depends on `authenticated`. A refusal is a 401 that says how to
authenticate (RFC 7235 `WWW-Authenticate`), never a silent 403 or an open door.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request

from node.config import WebAuthSettings
from node.logs import event

log = logging.getLogger("fracnode.web")
TOKEN_FILE = "api-token"


@dataclass(frozen=True)
class Credentials:
    tokens: tuple[str, ...]
    users: tuple[tuple[str, str], ...]  # (name, password)
    disabled: bool = False
    token_file: Path | None = None  # where the generated token lives, for the refusal's hint

    def check(self, authorization: str | None) -> str | None:
        """The authenticated principal's name, or None."""
        if self.disabled:
            return "anonymous"
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            for i, token in enumerate(self.tokens):
                if hmac.compare_digest(value.encode(), token.encode()):
                    return f"token-{i + 1}"
            return None
        if scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            for user, secret in self.users:
                # compare both, always, so timing says nothing about which one was wrong
                name_ok = hmac.compare_digest(name.encode(), user.encode())
                password_ok = hmac.compare_digest(password.encode(), secret.encode())
                if name_ok and password_ok:
                    return user
        return None


def credentials(settings: WebAuthSettings, data_dir: Path) -> Credentials:
    """The configured credentials; without any, a generated token kept in `<data_dir>/api-token`."""
    users = tuple((u.name, u.password) for u in settings.users)
    if settings.disabled or settings.tokens or users:
        return Credentials(tuple(settings.tokens), users, settings.disabled)
    path = data_dir / TOKEN_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(24) + "\n")
        event(log, logging.WARNING, "no web.auth configured: generated an API token",
              token_file=str(path.resolve()))
    return Credentials((path.read_text().strip(),), (), False, path.resolve())


def authenticated(request: Request) -> str:
    """FastAPI dependency: the principal, or a 401 that says how to authenticate."""
    creds: Credentials = request.app.state.credentials
    principal = creds.check(request.headers.get("authorization"))
    if principal is None:
        audit = getattr(request.app.state, "audit", None)
        if audit is not None:  # IHE ATNA: a failed login, from where, for what (never the secret)
            audit.http_refused(request.client.host if request.client else "", request.url.path)
        hint = "send 'Authorization: Bearer <token>' (web.auth.tokens"
        hint += f", or the generated token in {creds.token_file})" if creds.token_file else ")"
        if creds.users:
            hint += " or HTTP Basic credentials of a web.auth.users entry"
        raise HTTPException(
            status_code=401,
            detail=f"authentication required: {hint}",
            headers={"WWW-Authenticate": 'Basic realm="fracnode", charset="UTF-8"' if creds.users
                     else 'Bearer realm="fracnode"'},
        )
    request.state.principal = principal
    return principal
