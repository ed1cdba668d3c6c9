"""ASGI entry point with the hub inside: Django and tidings on one port, in one process.

    uvicorn chatsite.asgi_hub:application          # or hypercorn, or daphne

The browser connects to ``/realtime/connection/websocket`` on Django's own port
(set ``CHAT_HUB_WS_URL`` to that URL); every other request goes to Django. The
hub reads ``CHAT_HUB_CONFIG`` (the example's ``tidings.toml`` by default, where
the secret and API key must match Django's settings) and also opens its server
API port, so ``chat/realtime.py`` publishes with ``cent`` exactly as when
tidings runs beside Django (``chatsite/asgi.py``).
"""

import os
from pathlib import Path

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

from tidings import Hub, load_config

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

django_application = get_asgi_application()
if settings.DEBUG:  # as runserver does: Django serves the static files itself
    django_application = ASGIStaticFilesHandler(django_application)

config = os.environ.get("CHAT_HUB_CONFIG", Path(__file__).resolve().parents[1] / "tidings.toml")
hub = Hub(load_config(config), api=True)
application = hub.asgi(prefix="/realtime", fallback=django_application)
