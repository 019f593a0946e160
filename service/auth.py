"""API keys: ``X-API-Key`` or ``Authorization: Bearer``, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import ApiError

_header = APIKeyHeader(name="X-API-Key", auto_error=False)
_bearer = HTTPBearer(auto_error=False)


def require_api_key(
    request: Request,
    header_key: str | None = Depends(_header),
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> None:
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return
    problem = key_problem(header_key or (bearer.credentials if bearer else None), keys)
    if problem:
        raise ApiError(401, "unauthorized", problem)


def key_problem(offered: str | None, keys: list[str]) -> str | None:
    """Why ``offered`` does not open the API (None when it does, or when no keys are set)."""
    if not keys:
        return None
    if not offered:
        return "an API key is required (X-API-Key header or Authorization: Bearer)"
    # compare against every key, without stopping early, so timing says nothing about which matched
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered.encode(), key.encode())
    return None if matched else "invalid API key"


def offered_key(headers: dict[bytes, bytes]) -> str | None:
    """The key in raw ASGI headers: X-API-Key, else Authorization: Bearer."""
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].decode("latin-1")
    scheme, _, credentials = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None
