"""The HTTP edge: routes, schemas, the error table, OpenAPI, middleware and the raw-ASGI fast path."""
