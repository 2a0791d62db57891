"""``tipo serve``: an HTTP service with continuous batching across clients, and a web page.

Reading order: settings.py (every option), app.py (routes), engine_loop.py (one thread owns the
model; every client's steps share its batch), limits.py, schemas.py, errors.py, security.py,
metrics.py; static/ is the page. Needs the ``server`` extra (FastAPI, uvicorn)."""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {"ServerSettings": "settings", "create_app": "app", "serve": "app"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
