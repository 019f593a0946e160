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
    offered = header_key or (bearer.credentials if bearer else None)
    if not offered:
        raise ApiError(401, "unauthorized", "an API key is required (X-API-Key header or Authorization: Bearer)")
    # compare against every key, without stopping early, so timing says nothing about which matched
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered.encode(), key.encode())
    if not matched:
        raise ApiError(401, "unauthorized", "invalid API key")
