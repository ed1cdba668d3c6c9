"""ASGI entry point of the chat site.

Django itself needs no WebSocket support here: tidings, running next to it,
holds the WebSocket connections.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

application = get_asgi_application()
