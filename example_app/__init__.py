"""h3-fastapi example app: ``python -m example_app`` serves it on http://127.0.0.1:3000.

``example_app:app`` is the whole app (for ``uvicorn example_app:app``); the
seed examples also run alone: ``python -m example_app.websocket_seed``.
"""

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    # Imported on first use so that running one seed module does not load the others.
    if name == "app":
        from .routes import app

        return app
    raise AttributeError(name)
