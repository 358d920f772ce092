"""Domain errors raised below the routes. They know nothing of HTTP; ``app.edge.errors`` maps each
type to a status code and a JSON body in one table."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class; ``message`` is safe to show to clients; ``param`` names the request field at
    fault, where one is (the OpenAI-shaped routes report it)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class ModelNotFound(ServiceError):
    pass


class InvalidInput(ServiceError):
    pass


class UnsupportedOperation(ServiceError):
    pass


class PayloadTooLarge(ServiceError):
    pass


class UnsupportedMediaType(ServiceError):
    pass


class QueueFull(ServiceError):
    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(ServiceError):
    pass


class NotReady(ServiceError):
    pass


class BatchFailed(ServiceError):
    """The forward pass that held this request's rows raised; other batches are unaffected."""
