"""Cloud Functions entry points (``--entry-point``); each lives in ``functions/``."""

from functions.dead_letters import handle_dead_letters
from functions.generate import generate_images
from functions.http_api import http_api
from functions.thumbnail import make_thumbnails

__all__ = ["generate_images", "handle_dead_letters", "http_api", "make_thumbnails"]
