"""``python -m app`` / ``latentserve``: validate settings, load every model (failing fast with one
line naming the file and the cause), then serve with uvicorn."""

from __future__ import annotations

import logging
import signal
import sys

from pydantic import ValidationError


def configure_logging(level: str) -> None:
    from app.middleware import RequestIdFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger("latentserve")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def main() -> int:
    from app.settings import Settings, describe_errors

    try:
        settings = Settings()
    except ValidationError as e:
        print(describe_errors(e), file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    import uvicorn

    from app.main import create_app
    from app.registry import Registry
    from models.card import ModelLoadError

    try:
        registry = Registry.from_settings(settings)
    except ModelLoadError as e:
        print(f"latentserve: cannot load models: {e}", file=sys.stderr)
        return 1
    app = create_app(settings, registry)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, lifespan="on", proxy_headers=False, server_header=False)
    server = uvicorn.Server(config)
    # uvicorn handles SIGTERM (graceful shutdown), then re-raises it to the handler it found when
    # it started; this no-op one lets a clean drain end with exit status 0, as orchestrators expect.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    app.state.on_fatal = lambda: setattr(server, "should_exit", True)
    server.run()
    if app.state.fatal:
        print(f"latentserve: {app.state.fatal}", file=sys.stderr)
        return 1
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(main())
