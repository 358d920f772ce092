"""Service settings from the environment (prefix ``LATENTSERVE_``), validated at startup."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "LATENTSERVE_"
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    weights_dir: Path = DEFAULT_WEIGHTS_DIR
    models: Annotated[list[str], NoDecode] = Field(default_factory=list, description="comma list; empty = every gan/vae card in weights_dir")
    device: str = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    torch_threads: int = Field(0, ge=0, le=1024, description="intra-op threads for torch; 0 = torch's default "
                               "(100,000 crashed the process and exhausted the host's process table)")
    torchscript: bool = Field(True, description="run each forward pass as one frozen TorchScript graph, without the "
                              "GIL (kept only where its pixels equal eager mode's bit for bit)")
    channels_last: bool = Field(True, description="on a CPU, convolution weights in channels-last (NHWC) layout, "
                                "oneDNN's fast path (38% less time per pass here); a pixel may differ from the NCHW "
                                "layout's by one grey level (about 1 in 10,000): off gives the NCHW bytes")
    split_passes: bool = Field(True, description="on a CPU with TORCH_THREADS > 1, a pass of several rows runs as "
                               "parts of one thread each, in parallel, instead of every op split across the threads "
                               "(no OpenMP barrier per op); the same bytes, checked at warm-up")
    max_batch_rows: int = Field(32, ge=1, le=4096, description="most rows in one forward pass; on a CPU, 32 lets the "
                                "event loop answer one pass while the next computes; raise it on a GPU")
    min_batch_rows: int = Field(1, ge=1, le=4096, description="floor of the padded batch shapes; warm-up may raise it (README: batch invariance)")
    max_wait_ms: float = Field(2.0, ge=0, le=1000)
    max_queue_rows: int = Field(2048, ge=1)
    max_queue_wait_s: float = Field(2.0, ge=0, le=3600, description="refuse work (429) when the queue already holds "
                                    "more than this many seconds of it, by the measured rows/s; 0 = rows bound only")
    request_timeout_s: float = Field(30.0, gt=0, le=3600)
    max_images_per_request: int = Field(64, ge=1, le=4096)
    max_interpolation_steps: int = Field(64, ge=2, le=1024)
    open_port_when_ready: bool = Field(False, description="a single process opens its port only once the models are "
                                       "warmed up (no 503s while warming up); off by default: orchestrators want "
                                       "liveness answered during the warm-up")
    playground: bool = Field(True, description="serve the playground page at / (its static files ship in the package)")
    projection_concurrency: int = Field(1, ge=1, le=64, description="GAN projections (/project) run at once, each in "
                                        "its own thread beside the forward pass; up to 4x this many wait, more get a 429")
    projection_max_steps: int = Field(1000, ge=1, le=100_000, description="most optimisation steps a /project request may ask")
    projection_timeout_s: float = Field(10.0, gt=0, le=3600, description="a projection stops at this time with the best "
                                        "latent found so far (its answer says how many steps ran)")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="largest JSON request body (413 beyond)")
    max_upload_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="largest image upload body (/encode, /variations, /project), multipart included")
    max_upload_pixels: int = Field(4096 * 4096, ge=28 * 28)
    workers: int = Field(1, ge=1, le=64, description="worker processes behind one port, each with its own models, "
                         "batcher and event loop; more than 1 only on a GPU, where one process's event loop is "
                         "the limit (README: GPU nodes)")
    png_threads: int = Field(2, ge=1, le=64)
    png_compress_level: int = Field(1, ge=0, le=9)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["json", "text"] = "json"
    opentelemetry: bool = Field(False, description="FastAPI's native OpenTelemetry spans, metrics and logs, sent to the "
                                "globally configured providers; off by default: it looks them up on every request")
    drain_timeout_s: float = Field(25.0, ge=0, le=3600, description="on SIGTERM, how long accepted work may take to finish")
    # behind a gateway
    root_path: str = Field("", pattern=r"^(/[A-Za-z0-9._~-]+)*$", description="path prefix the gateway strips")
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"], description="proxies whose X-Forwarded-* headers are trusted; * = any")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="allowed browser origins; none by default")
    # access control
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list, description="comma list; empty = no keys needed")
    api_keys_file: Path | None = Field(None, description="one key per line (# comments); added to api_keys")
    protect_metrics: bool = False

    @field_validator("models", "forwarded_allow_ips", "cors_origins", "api_keys", mode="before")
    @classmethod
    def _split_list(cls, v: object) -> object:
        if isinstance(v, str):
            return [m.strip() for m in v.split(",") if m.strip()]
        return v

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        v = v.strip().lower()
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isascii() and v[5:].isdigit()):
            return v
        raise ValueError("must be auto, cpu, cuda, cuda:N or mps")

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_proxies(cls, v: list[str]) -> list[str]:
        for entry in v:
            if entry != "*":
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"{entry!r} is not an IP address or network (CIDR); give addresses "
                                     "such as 10.0.0.0/8 or 127.0.0.1, or * for any") from None
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check_batches(self) -> Settings:
        if self.min_batch_rows > self.max_batch_rows:
            raise ValueError(f"LATENTSERVE_MIN_BATCH_ROWS ({self.min_batch_rows}) must not exceed "
                             f"LATENTSERVE_MAX_BATCH_ROWS ({self.max_batch_rows})")
        if self.max_images_per_request > self.max_queue_rows:
            raise ValueError(f"LATENTSERVE_MAX_IMAGES_PER_REQUEST ({self.max_images_per_request}) must not exceed "
                             f"LATENTSERVE_MAX_QUEUE_ROWS ({self.max_queue_rows}): such a request could never be queued")
        if self.max_interpolation_steps > self.max_queue_rows:
            raise ValueError(f"LATENTSERVE_MAX_INTERPOLATION_STEPS ({self.max_interpolation_steps}) must not exceed "
                             f"LATENTSERVE_MAX_QUEUE_ROWS ({self.max_queue_rows}): such a request could never be queued")
        return self

    def all_api_keys(self) -> list[str]:
        """Keys from API_KEYS and API_KEYS_FILE (read at startup; the file is not logged)."""
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_keys_file is not None:
            try:
                text = Path(self.api_keys_file).read_text()
            except OSError as e:
                raise ValueError(f"LATENTSERVE_API_KEYS_FILE: cannot read {self.api_keys_file} ({e.strerror})") from None
            from_file = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
            if not from_file:  # an emptied or rotated-away secret must not turn the keys off
                raise ValueError(f"LATENTSERVE_API_KEYS_FILE: {self.api_keys_file} holds no key (only blank or # lines); "
                                 "unset the variable to serve without keys")
            keys += from_file
        keys = [k for k in keys if k]
        if self.protect_metrics and not keys:
            raise ValueError("LATENTSERVE_PROTECT_METRICS=true needs API keys (LATENTSERVE_API_KEYS or LATENTSERVE_API_KEYS_FILE)")
        return keys


def describe_errors(exc: ValidationError) -> str:
    """One line per bad variable, named as the operator sets it."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "__root__"]
        if loc:
            lines.append(f"invalid setting {ENV_PREFIX + loc[0].upper()}: {err.get('msg')} (got {err['input']!r})")
        else:
            lines.append(f"invalid settings: {str(err.get('msg')).removeprefix('Value error, ')}")
    return "\n".join(lines)
