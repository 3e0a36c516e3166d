"""Service settings, read from `DSCNET_*` environment variables and checked at start-up.

Every limit has a floor and a ceiling: a typo such as `DSCNET_MAX_UPLOAD_BYTES=0` or a
limit of terabytes would otherwise surface only as odd behaviour under load.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.cpus import available_cpus
from app.imaging import DEFAULT_MAX_PIXELS, IMAGE_SIZE

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
# Default cap on concurrent model runs: each holds its own working memory (up to MAX_RUN_IMAGES
# images' activations), and only two cores were measured (docs/PERFORMANCE.md).
DEFAULT_MAX_RUNS = 4


class Settings(BaseSettings):
    """Configuration of the service and of `dscnet predict`; env prefix `DSCNET_`."""

    model_config = SettingsConfigDict(env_prefix="DSCNET_", frozen=True)

    model_path: Path = Field(
        REPO_ROOT / "models" / "dscnet.onnx", description="The ONNX model file."
    )
    model_card_path: Path | None = Field(
        None, description="The model card; default: the model path with a .json suffix."
    )
    max_upload_bytes: int = Field(
        20 * MIB, ge=1024, le=1024 * MIB, description="Largest accepted image file, in bytes."
    )
    max_batch_bytes: int = Field(
        128 * MIB, ge=1024, le=4096 * MIB, description="Largest /predict-batch request body."
    )
    max_batch_images: int = Field(32, ge=1, le=512, description="Most images in one batch.")
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=IMAGE_SIZE * IMAGE_SIZE,
        le=500_000_000,
        description="Most pixels an image header may declare (decompression bombs).",
    )
    cpus: int | None = Field(
        None, ge=1, le=256, description="CPUs the model runs may use; default: usable CPUs (cgroup quota, affinity)."
    )
    ort_threads: int | None = Field(
        None, ge=1, le=256, description="onnxruntime intra-op threads per run; default: CPUs / model runs."
    )
    model_runs: int | None = Field(
        None,
        ge=1,
        le=64,
        description=f"Model runs at once, each on its share of the CPUs (the thread layout); default: "
        f"one per CPU, at most {DEFAULT_MAX_RUNS} (with DSCNET_ORT_THREADS: as many as fit the CPUs).",
    )
    wide_lone_runs: bool = Field(
        True, description="A model run with no other in flight or waiting uses all the CPUs (a second session)."
    )
    # Micro-batching of concurrent requests (app.batching); see docs/PERFORMANCE.md.
    # Off by default: on two AVX2 cores a batch costs more CPU per image than single runs
    # (docs/PERFORMANCE.md); worth trying where batches are cheaper (wide CPUs, VNNI, GPUs).
    batching: bool = Field(False, description="Coalesce concurrent requests into shared model runs.")
    batch_max_size: int = Field(16, ge=1, le=512, description="Most images in one shared model run.")
    batch_max_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="Longest a partial batch waits for requests still decoding."
    )
    batch_queue_images: int = Field(
        256, ge=1, le=8192, description="Most images waiting for the model; beyond: 503 overloaded."
    )
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    # Access, admission and shutdown (app.security, app.admission, app.server); see SECURITY.md.
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (), description="API keys, comma-separated; none configured: no authentication."
    )
    api_keys_file: Path | None = Field(None, description="A file of API keys, one per line.")
    metrics_require_key: bool = Field(False, description="Whether /metrics needs an API key too.")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Origins allowed by CORS, comma-separated; none: no CORS headers."
    )
    max_concurrent_requests: int = Field(
        32, ge=1, le=10_000, description="Requests in progress at once; beyond: 503 overloaded at once."
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds a request body may take to arrive; then 408 body_timeout (a stalled client "
        "frees its admission slot).",
    )
    shutdown_timeout_s: float = Field(
        20.0, gt=0, le=3600, description="On SIGTERM, how long in-flight requests may take to finish."
    )

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin like https://lab.example.org (no path)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("model_path")
    @classmethod
    def _onnx_suffix(cls, value: Path) -> Path:
        if value.suffix != ".onnx":
            raise ValueError(f"the model must be an .onnx file, got {value}")
        return value

    @model_validator(mode="after")
    def _queue_holds_one_batch(self) -> Settings:
        if self.batching and self.batch_queue_images < self.max_batch_images:
            raise ValueError(
                f"batch_queue_images ({self.batch_queue_images}) is smaller than "
                f"max_batch_images ({self.max_batch_images}): a full /predict-batch could never run"
            )
        return self

    @model_validator(mode="after")
    def _batch_holds_one_upload(self) -> Settings:
        if self.max_batch_bytes < self.max_upload_bytes:
            raise ValueError(
                f"max_batch_bytes ({self.max_batch_bytes}) is smaller than "
                f"max_upload_bytes ({self.max_upload_bytes}): no batch could hold one image"
            )
        return self

    @property
    def card_path(self) -> Path:
        """Where the model card is read from."""
        return self.model_card_path or self.model_path.with_suffix(".json")

    @property
    def usable_cpus(self) -> int:
        """CPUs for the model runs: the setting, else what this process may use."""
        return self.cpus or available_cpus()

    @property
    def runs(self) -> int:
        """Model runs at once: the setting; else as many runs of `ort_threads` as fit the CPUs;
        else one per CPU, up to DEFAULT_MAX_RUNS."""
        if self.model_runs:
            return self.model_runs
        if self.ort_threads:
            return max(1, self.usable_cpus // self.ort_threads)
        return min(self.usable_cpus, DEFAULT_MAX_RUNS)

    @property
    def intra_op_threads(self) -> int:
        """onnxruntime's threads per run: the setting, else the CPUs shared out between the runs."""
        return self.ort_threads or max(1, self.usable_cpus // self.runs)

    @property
    def wide_threads(self) -> int | None:
        """Threads of the session for lone runs (all the CPUs), or None when there is none to gain."""
        if not self.wide_lone_runs or self.runs == 1 or self.intra_op_threads >= self.usable_cpus:
            return None
        return self.usable_cpus


@lru_cache
def get_settings() -> Settings:
    """The settings from the environment, read once; tests pass their own to `create_app`."""
    return Settings()


def describe_settings_error(error: ValidationError) -> str:
    """One line per invalid setting, named by its environment variable."""
    lines = ["invalid settings:"]
    for item in error.errors():
        name = "DSCNET_" + "_".join(str(part) for part in item["loc"]).upper() if item["loc"] else "settings"
        lines.append(f"  {name}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)
