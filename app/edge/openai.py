"""The OpenAI images API shape (``/v1/images/generations`` and ``/v1/images/variations``): what
a prompt, a size and OpenAI's error body mean here. Frontends and tools that speak that API with
a configurable base URL work unchanged; the routes are in app/edge/routes/images.py.

- A prompt names a class: the first class name (or a common word for it, e.g. "sneaker",
  "jacket", "trousers") found in it, case-insensitive, as a whole word. None found: each image's
  class is drawn from its seed, as in ``samples``, and ``revised_prompt`` says so.
- A size maps to an upscale of the 28x28 images: 28x28, 56x56, 112x112 and 224x224 exactly;
  OpenAI's standard sizes (256x256 ... 1792x1024, "auto") to the nearest of those, said in
  ``revised_prompt``; anything else is a 400.
- Errors on these routes only are ``{"error": {"message", "type", "param", "code"}}``, with the
  statuses of the rest of the API (a middleware rewrites the service's own error bodies)."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.edge.asgi import route_path
from app.edge.paths import OPENAI_PATHS

SIZES = {"28x28": 1, "56x56": 2, "112x112": 4, "224x224": 8}
OPENAI_SIZES = ("256x256", "512x512", "1024x1024", "1792x1024", "1024x1792", "1536x1024", "1024x1536", "auto")
# words people use for Fashion-MNIST's classes, by class name (only the classes a model has count)
ALIASES = {
    "T-shirt/top": ("t-shirt", "tshirt", "t shirt", "tee", "top"), "Trouser": ("trouser", "trousers", "pants", "jeans"),
    "Pullover": ("pullover", "sweater", "jumper", "hoodie"), "Dress": ("dress", "gown"),
    "Coat": ("coat", "jacket", "parka"), "Sandal": ("sandal", "sandals", "flip-flop"), "Shirt": ("shirt", "blouse"),
    "Sneaker": ("sneaker", "sneakers", "trainer", "trainers", "shoe", "shoes"),
    "Bag": ("bag", "handbag", "purse", "backpack"), "Ankle boot": ("ankle boot", "ankle boots", "boot", "boots"),
}


class SizeError(ValueError):
    pass


def scale_for(size: str | None) -> tuple[int, str | None]:
    """(upscale factor, a note when the size was answered with another) for an OpenAI ``size``."""
    if size is None:
        size = "1024x1024"  # OpenAI's default
    if size in SIZES:
        return SIZES[size], None
    if size in OPENAI_SIZES:
        if size == "auto":
            return 1, "size auto: 28x28, the models' own size"
        side = min(int(v) for v in size.split("x"))
        best = min(SIZES, key=lambda s: abs(int(s.split("x")[0]) - side))
        return SIZES[best], f"size {size} answered with {best} (sizes: {', '.join(SIZES)})"
    raise SizeError(f"size {size[:40]!r} is not offered: use one of {', '.join(SIZES)} "
                    f"(or OpenAI's {', '.join(OPENAI_SIZES[:3])}, ..., answered with the nearest)")


@functools.lru_cache(maxsize=64)
def _class_words(classes: tuple[str, ...]) -> tuple[re.Pattern[str], dict[str, int]]:
    """One pattern for every word that names one of ``classes`` (longest first, so "ankle boot"
    wins over "boot" and "t-shirt" over "shirt"), and the class of each word."""
    words: dict[str, int] = {}
    for index, name in enumerate(classes):
        for word in (name.lower(), *name.lower().split("/"), *ALIASES.get(name, ())):
            words.setdefault(word, index)
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(r"(?<![a-z0-9])(?:" + alternatives + r")(?![a-z0-9])"), words


def class_in_prompt(prompt: str, classes: list[str]) -> int | None:
    """The class named earliest in the prompt, by its name or a common word for it; else None."""
    pattern, words = _class_words(tuple(classes))
    m = pattern.search(prompt.lower())
    return None if m is None else words[m.group(0)]


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status == 504:
        return "timeout_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def openai_error(status: int, message: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def _param(error: dict[str, Any]) -> str | None:
    if error.get("code") == "model_not_found":
        return "model"
    details = error.get("details") or []
    if details:
        field = str(details[0].get("field", ""))
        return field.removeprefix("body.").removeprefix("query.") or None
    return error.get("param")


class OpenAIErrorMiddleware:
    """On the OpenAI-shaped routes only, every JSON error body the service sends (from a route, the
    fast path, a middleware: API keys, body limits, load shedding, readiness) is rewritten into
    OpenAI's shape, status and headers kept."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) not in OPENAI_PATHS:
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def shaped(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message  # held until the body is complete
                return
            if start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            try:
                error = json.loads(body)["error"]
                body = json.dumps(openai_error(start["status"], str(error.get("message", "")), error.get("code"),
                                               _param(error))).encode()
            except (ValueError, KeyError, TypeError):
                pass  # not the service's JSON error: sent as it is
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, shaped)
