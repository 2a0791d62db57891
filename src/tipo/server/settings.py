"""The server's settings: one model feeds ``tipo serve`` flags, ``TIPO_*`` environment
variables and ``create_app(settings)``. Flags win over the environment, which wins over the
defaults; every limit a request can meet is here."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# A comma-separated list in flags and environment variables.
CommaList = Annotated[tuple[str, ...], NoDecode]


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIPO_", extra="forbid", frozen=True)

    # -- the model (fixed at startup; never taken from a request) --------------------------------
    model: str | None = Field(None, description="Hub id, local folder or .gguf file")
    backend: str = Field("auto", description="auto, torch, transformers, llamacpp or openai")
    device: str = "cpu"
    dtype: str | None = None
    offline: bool = False
    tag_csv: str | None = Field(None, description="tag CSV (SD-WebUI autocomplete format)")
    url: CommaList = Field((), description="openai backend: server URL(s) ending in /v1")
    remote_api_key: SecretStr | None = Field(None, description="openai backend: its API key")
    remote_dialect: str = Field("auto", description="openai backend: vllm, sglang or llamacpp")
    remote_llguidance: bool = Field(
        False, description="openai backend: the servers run llguidance (vocabulary, bans)"
    )

    # -- network and security ---------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = Field(None, description="require Authorization: Bearer <key>")
    cors_origin: CommaList = Field((), description="origins allowed to call the API")

    # -- scheduling and limits ---------------------------------------------------------------------
    max_batch: int = Field(16, ge=1, le=1024, description="sequences decoded together")
    compile_attention: bool = Field(
        False, description="torch backend on CPU: a bf16 KV cache read by a compiled decode "
        "attention (faster batches; startup +5-25 s to compile, needs a C++ compiler)",
    )  # fmt: skip
    max_queue: int = Field(64, ge=0, description="sequences waiting beyond a full batch")
    timeout: float = Field(120.0, gt=0, description="seconds a request may take")
    max_variants: int = Field(16, ge=1, le=256)
    max_new_tokens: int = Field(512, ge=16, le=4096, description="per step")
    max_retries: int = Field(3, ge=0, le=20)
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    max_text_chars: int = Field(8_000, ge=16, description="tags, nl, template")
    max_bans: int = Field(64, ge=0)
    max_ban_chars: int = Field(200, ge=1)
    body_timeout: float = Field(10.0, gt=0, description="seconds to receive a request body")

    @field_validator("url", "cors_origin", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        """``"a,b"`` (a flag or an environment variable) -> ("a", "b")."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


__all__ = ["ServerSettings"]
