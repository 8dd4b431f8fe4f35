"""`livelm serve`: an HTTP server that learns from the documents it is sent while it serves.

One process: the FastAPI app, a background learner thread and an embedded SQLite queue.
"""

from livelm.server.app import create_app
from livelm.server.settings import ApiKey, ServerSettings

__all__ = ["ApiKey", "ServerSettings", "create_app"]
