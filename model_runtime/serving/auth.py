"""Optional Bearer API keys: from MODELFLEET_API_KEY (comma-separated) and/or a file (one key per line)."""

from __future__ import annotations

import hmac
from pathlib import Path

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from model_runtime.serving.errors import APIError


def load_api_keys(env_value: str | None, key_file: str | Path | None) -> list[str]:
    keys = [k.strip() for k in (env_value or "").split(",") if k.strip()]
    if key_file:
        lines = Path(key_file).read_text().splitlines()
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return keys


class APIKeyAuth:
    """FastAPI dependency: passes when no keys are configured, else needs ``Authorization: Bearer <key>``."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]
        self._bearer = HTTPBearer(auto_error=False, description="An API key, when the server is started with keys.")

    async def __call__(self, request: Request) -> None:
        if not self._keys:
            return
        credentials: HTTPAuthorizationCredentials | None = await self._bearer(request)
        given = credentials.credentials.encode() if credentials else b""
        # Compare against every key, so timing does not reveal which (or whether a prefix) matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise APIError(401, "a valid API key is required (Authorization: Bearer <key>)",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
