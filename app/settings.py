"""All service configuration, from the environment (prefix ``CXR_``), validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model_store.registry import DEFAULT_STORE

CPU_DEFAULT_BATCH = 16
GPU_DEFAULT_BATCH = 64


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CXR_", env_file=None, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes (each loads the model)")

    model_store: Path = DEFAULT_STORE
    model_name: str = "pneumonia"
    model_version: str | None = Field(None, description="a version number; unset or 'latest' = newest")
    device: Literal["auto", "cpu", "gpu"] = "auto"

    max_batch_size: int | None = Field(None, ge=1, le=1024, description="default 16 on CPU, 64 on GPU")
    max_delay_ms: float = Field(5.0, ge=0, le=1000)
    queue_limit: int = Field(256, ge=1, le=100_000)
    decode_threads: int = Field(2, ge=1, le=64)

    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(50_000_000, ge=64)
    max_batch_files: int = Field(32, ge=1, le=1024)

    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    timeout_keep_alive: int = Field(5, ge=1, le=600, description="seconds an idle keep-alive connection is kept")
    graceful_timeout: int = Field(30, ge=1, le=600, description="seconds to drain on shutdown")

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("model_version", mode="before")
    @classmethod
    def check_version(cls, value: object) -> object:
        if value in (None, "", "latest"):
            return None
        if not str(value).isdigit() or int(str(value)) < 1:
            raise ValueError(f"CXR_MODEL_VERSION must be a positive integer or 'latest', got {value!r}")
        return str(int(str(value)))

    @field_validator("api_keys")
    @classmethod
    def check_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if len(key) < 16:
                raise ValueError("each CXR_API_KEYS entry must be at least 16 characters (use a random token)")
        return keys

    @model_validator(mode="after")
    def check_store(self) -> Settings:
        if not self.model_store.is_dir():
            raise ValueError(f"CXR_MODEL_STORE={self.model_store} is not a directory "
                             "(expected <store>/<name>/<version>/model.h5)")
        return self

    def batch_size_for(self, gpu: bool) -> int:
        if self.max_batch_size is not None:
            return self.max_batch_size
        return GPU_DEFAULT_BATCH if gpu else CPU_DEFAULT_BATCH
