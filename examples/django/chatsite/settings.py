"""Settings of the chat site.

Everything that differs between machines comes from the environment:

- ``DJANGO_DEBUG`` (default ``true``): set ``false`` in production.
- ``DJANGO_SECRET_KEY``: required when ``DJANGO_DEBUG`` is false.
- ``DJANGO_DB_PATH``: the SQLite file (default ``db.sqlite3`` next to ``manage.py``).
- ``CHAT_HUB_TOKEN_SECRET``: the HS256 secret shared with tidings
  (its ``token_hmac_secret_key``); Django signs connection tokens with it.
- ``CHAT_HUB_API_URL`` / ``CHAT_HUB_API_KEY``: tidings' server HTTP API, where
  Django publishes (its ``[http_api]`` port and ``key``).
- ``CHAT_HUB_WS_URL``: the WebSocket endpoint the browser connects to.
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


DEBUG = _env_bool("DJANGO_DEBUG", True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("set DJANGO_SECRET_KEY when DJANGO_DEBUG is false")
    SECRET_KEY = "django-insecure-tidings-chat-example-for-local-development-only"

ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "chatsite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB_PATH") or BASE_DIR / "db.sqlite3",
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# The centrifuge-js SDK, installed by `npm install` (see package.json), is served
# as a static file: {% static "centrifuge/centrifuge.js" %}.
STATICFILES_DIRS = [("centrifuge", BASE_DIR / "node_modules" / "centrifuge" / "dist")]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- tidings, the real-time layer next to Django ---------------------------------------

CHAT_HUB_TOKEN_SECRET = os.environ.get("CHAT_HUB_TOKEN_SECRET", "")
CHAT_HUB_TOKEN_TTL = int(os.environ.get("CHAT_HUB_TOKEN_TTL", "3600"))
CHAT_HUB_API_URL = os.environ.get("CHAT_HUB_API_URL", "http://127.0.0.1:9000/api")
CHAT_HUB_API_KEY = os.environ.get("CHAT_HUB_API_KEY", "")
CHAT_HUB_WS_URL = os.environ.get("CHAT_HUB_WS_URL", "ws://127.0.0.1:8001/connection/websocket")
CHAT_HUB_CHANNEL = "chat:lobby"
