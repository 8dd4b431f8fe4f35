"""`livelm serve`: an HTTP server that learns from the documents it is sent while it serves.

One process: the FastAPI app, a background learner thread and an embedded SQLite queue.
"""

from typing import TYPE_CHECKING

from livelm.lazy import lazy_names
from livelm.server.settings import ApiKey, ServerSettings

if TYPE_CHECKING:
    from livelm.server.app import create_app

# The app imports FastAPI, torch and transformers: the settings, and so `--help`, need none.
__getattr__ = lazy_names(__name__, {"livelm.server.app": ("create_app",)})

__all__ = ["ApiKey", "ServerSettings", "create_app"]
