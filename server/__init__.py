"""Real-time shopping-cart sync server."""

from .app import create_app
from .config import Settings

__all__ = ["Settings", "create_app"]
