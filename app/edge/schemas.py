"""Request and response models, named by role. Bounds that depend on settings (n, steps) are
checked by the generation service; these bounds are the hard outer limits."""

from __future__ import annotations

from itertools import islice
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

MAX_SEED = 2**32 - 1
MAX_ITEMS = 4096  # the outer bound of n, latents and labels (LATENTSERVE_MAX_IMAGES_PER_REQUEST is at most this)
MAX_UNKNOWN_FIELDS = 16  # reported one by one; beyond this an object's unknown fields are one error
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Label = Annotated[StrictInt | StrictStr, Field(description="class index (0-9) or class name, case-insensitive", examples=[7, "Sneaker"])]
# Lists stop at their first bad item (fail_fast): a 1 MB body of 200,000 wrong-typed labels made
# 400,000 validation errors, and building and sending them held the event loop for 2-6 s.
Labels = Annotated[list[Label], Field(max_length=MAX_ITEMS, fail_fast=True)]
Latent = Annotated[list[FiniteFloat], Field(min_length=1, max_length=4096, fail_fast=True)]


class Strict(BaseModel):
    """Request bodies: unknown fields are errors, and JSON types are taken as sent (strict mode: a
    boolean is not a seed, "2" is not a count, 1.0 is not an integer; an integer is a float)."""
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _bounded_unknown_fields(cls, data: Any) -> Any:
        """A few unknown fields get one error each (extra="forbid"); an object with many (90,000
        fit in 1 MB) gets one error naming the first few, so that no body makes errors by the
        hundred thousand."""
        if isinstance(data, dict) and len(data) > MAX_UNKNOWN_FIELDS:  # else too few keys for many unknown ones
            fields = cls.model_fields
            count = len(data) - sum(k in data for k in fields)
            if count > MAX_UNKNOWN_FIELDS:
                shown = ", ".join(repr(k)[:40] for k in islice((k for k in data if k not in fields), 5))
                raise ValueError(f"{count} unknown fields ({shown}, ...); fields are: {', '.join(fields)}")
        return data


class ImageSpec(BaseModel):
    channels: int
    height: int
    width: int


class ModelInfo(BaseModel):
    name: str
    kind: Literal["gan", "vae"]
    version: str
    latent_dim: int
    image: ImageSpec
    classes: list[str]
    metrics: dict
    sha256: str


class ModelList(BaseModel):
    models: list[ModelInfo]


class SampleRequest(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"n": 4, "seed": 7, "labels": "Sneaker", "truncation": 0.9, "format": "png", "columns": 4},
        {"n": 2, "seed": 42, "labels": [0, "Bag"], "format": "json", "include_latents": True},
    ]})
    n: int = Field(1, ge=1, le=MAX_ITEMS, description="number of images (capped by LATENTSERVE_MAX_IMAGES_PER_REQUEST)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="image i uses seed + i; absent = random, returned in X-Seed")
    labels: Label | Labels | None = Field(None, description="one label for all, n labels, or absent = drawn from each image's seed")
    truncation: float = Field(1.0, gt=0.0, le=1.0, description="keep the central `truncation` mass of the latent prior; 1 = off")
    format: Literal["png", "json"] = "png"
    columns: int = Field(8, ge=1, le=256, description="grid columns for png with n > 1")
    scale: int = Field(1, ge=1, le=16, description="nearest-neighbour upscaling of png output")
    include_latents: bool = Field(False, description="json only: add each image's latent")


class DecodeRequest(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        # fashion-vae's latent_dim is 16 (fashion-gan's 64): the all-zero latent is the prior's mean
        {"latents": [[0.0] * 16], "labels": "Dress", "format": "png", "scale": 4},
    ]})
    latents: list[Latent] = Field(min_length=1, max_length=MAX_ITEMS, fail_fast=True,
                                  description="one list of latent_dim finite floats per image")
    labels: Label | Labels = Field(0, description="one label for all or one per latent")
    format: Literal["png", "json"] = "png"
    columns: int = Field(8, ge=1, le=256)
    scale: int = Field(1, ge=1, le=16)


class SeedEndpoint(Strict):
    seed: int = Field(ge=0, le=MAX_SEED, description="the latent of image `seed` (as in samples)")


class LatentEndpoint(Strict):
    latent: Latent = Field(description="latent_dim finite floats")


# exactly one of seed or latent, said in the schema itself (two closed objects) so that clients
# and schema-driven fuzzers see the rule the server applies
Endpoint = SeedEndpoint | LatentEndpoint


class InterpolateRequest(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"start": {"seed": 1}, "end": {"seed": 2}, "steps": 8, "method": "slerp", "label": "Dress", "format": "gif"},
    ]})
    start: Endpoint
    end: Endpoint
    steps: int = Field(8, ge=2, le=1024, description="frames including both ends (capped by LATENTSERVE_MAX_INTERPOLATION_STEPS)")
    method: Literal["slerp", "lerp"] = "slerp"
    label: Label = 0
    truncation: float = Field(1.0, gt=0.0, le=1.0, description="applied to seed endpoints")
    format: Literal["png", "gif", "json"] = "png"
    scale: int = Field(1, ge=1, le=16)
    frame_ms: int = Field(100, ge=20, le=5000, description="gif frame duration")


class StartPoint(Strict):
    """Where a latent-control request begins: a seed (its latent as ``samples`` draws it), an
    explicit latent, or neither (a random seed, returned in X-Seed). Not both."""
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="the latent of samples' image `seed`; absent with no latent = random")
    latent: Latent | None = Field(None, description="latent_dim finite floats, instead of a seed")
    truncation: float = Field(1.0, gt=0.0, le=1.0, description="applied to a seed's latent, as in samples")

    @model_validator(mode="after")
    def _one_start(self) -> StartPoint:
        if self.seed is not None and self.latent is not None:
            raise ValueError("give seed or latent, not both")
        return self


class Move(Strict):
    direction: int = Field(ge=0, le=4095, description="index into GET .../directions")
    amount: FiniteFloat = Field(ge=-1000.0, le=1000.0, description="distance along the unit direction")


class EditRequest(StartPoint):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"seed": 7, "label": "Sneaker", "moves": [{"direction": 0, "amount": 2.0}, {"direction": 3, "amount": -1.5}], "scale": 4},
        {"seed": 42, "moves": [{"direction": 1, "amount": 3.0}], "format": "json"},
    ]})
    label: Label | None = Field(None, description="class; absent = drawn from the seed (as samples), or 0 for a latent")
    moves: list[Move] = Field(default_factory=list, max_length=64, description="added in order; all 0 = the sample itself")
    format: Literal["png", "json"] = "png"
    scale: int = Field(1, ge=1, le=16)


class TraverseRequest(StartPoint):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"seed": 7, "label": "Dress", "direction": 0, "extent": 3.0, "steps": 7, "format": "png", "scale": 2},
        {"seed": 3, "direction": 1, "steps": 16, "format": "gif", "scale": 4},
    ]})
    label: Label | None = Field(None, description="class; absent = drawn from the seed (as samples), or 0 for a latent")
    direction: int = Field(0, ge=0, le=4095, description="index into GET .../directions")
    extent: float = Field(3.0, gt=0.0, le=1000.0, description="frames move from -extent to +extent")
    steps: int = Field(7, ge=2, le=MAX_ITEMS, description="frames (capped by LATENTSERVE_MAX_IMAGES_PER_REQUEST)")
    format: Literal["png", "gif", "json"] = "png"
    scale: int = Field(1, ge=1, le=16)
    frame_ms: int = Field(100, ge=20, le=5000, description="gif frame duration")


class ClassSwapRequest(StartPoint):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"seed": 7, "truncation": 0.8, "scale": 2},
        {"seed": 11, "labels": ["Sneaker", "Sandal", "Ankle boot"], "format": "json"},
    ]})
    labels: Labels | None = Field(None, min_length=1, description="the classes to show, in order; absent = every class")
    format: Literal["png", "json"] = "png"
    columns: int | None = Field(None, ge=1, le=256, description="strip columns; absent = one row")
    scale: int = Field(1, ge=1, le=16)


class Direction(BaseModel):
    index: int
    eigenvalue: float
    share: float  # of the sum of eigenvalues: how much of the first layer's response it carries
    vector: list[float]


class DirectionsResponse(BaseModel):
    model: str
    version: str
    method: str
    latent_dim: int
    directions: list[Direction]


class ProjectionResponse(BaseModel):
    model: str
    version: str
    label: int
    latent: list[float]
    mse: float
    start_mse: float
    steps: int
    complete: bool
    seed: int


class ImageItem(BaseModel):
    index: int
    seed: int | None
    label: int
    label_name: str
    png_base64: str
    latent: list[float] | None = None


class ImagesResponse(BaseModel):
    model: str
    version: str
    seed: int | None
    images: list[ImageItem]


class LatentStats(BaseModel):
    mu: list[float]
    logvar: list[float]
    label: int


class EncodeResponse(BaseModel):
    model: str
    version: str
    latents: list[LatentStats]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str
    models: dict[str, str] = {}
