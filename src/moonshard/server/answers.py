"""The answers of the HTTP API as typed models: what ``/openapi.json`` says each call returns.

Every 2xx body of the API is one of these, so the OpenAPI document describes it with a real
schema and a stable title (the class name), and the schema test can check an answer against
its model. Answers built as dicts are validated through these models on the way out.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "RotatedAdminToken",
    "TokenCreated",
    "TokenItem",
]


class _Answer(BaseModel):
    # Answers are ours: an unknown field is a drift between code and model, refused in tests.
    model_config = ConfigDict(extra="forbid")


class TokenItem(_Answer):
    """One token of ``GET /v1/tokens`` (never its secret)."""

    id: str = Field(description="The token's public name, for DELETE /v1/tokens/{id}")
    tenant: str | None = Field(description="The tenant it reaches; null for the admin token")
    label: str | None = Field(description="What it is for; 'admin' for the admin token")
    created_at: float = Field(description="Unix seconds")
    last_used_at: float | None = Field(description="Unix seconds, to the minute; null if never")


class TokenCreated(_Answer):
    """``POST /v1/tokens``: the new token, shown this once."""

    id: str
    token: str = Field(description="The bearer token; only its hash is kept")
    tenant: str
    label: str | None


class RotatedAdminToken(_Answer):
    """``POST /v1/tokens/rotate-admin``: the new admin token; the old one has stopped."""

    id: str
    token: str
    file: str | None = Field(description="The admin token file it was written to, if any")


