"""The chat page, the token endpoint and the send endpoint."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable

from cent import CentError
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from . import realtime

logger = logging.getLogger(__name__)

MAX_TEXT_LENGTH = 2000

View = Callable[[HttpRequest], HttpResponse]


def login_required_json(view: View) -> View:
    """Like ``login_required``, but answer 401 JSON instead of redirecting to the login page.

    The endpoints below are called by JavaScript, which wants a status it can act
    on (centrifuge-js stops reconnecting when ``getToken`` reports 401), not an
    HTML login form.
    """

    @functools.wraps(view)
    def wrapper(request: HttpRequest) -> HttpResponse:
        if not request.user.is_authenticated:
            return JsonResponse({"error": "login required"}, status=401)
        return view(request)

    return wrapper


@require_GET
@login_required
def index(request: HttpRequest) -> HttpResponse:
    context = {
        "chat_config": {
            "wsUrl": settings.CHAT_HUB_WS_URL,
            "channel": settings.CHAT_HUB_CHANNEL,
            "tokenUrl": reverse("chat:token"),
            "sendUrl": reverse("chat:send"),
            "loginUrl": reverse("login"),
            "user": request.user.get_username(),
        },
    }
    return render(request, "chat/index.html", context)


@never_cache
@require_GET
@login_required_json
def token(request: HttpRequest) -> HttpResponse:
    """``{"token": JWT}``: a tidings connection token for the logged-in user."""
    return JsonResponse({"token": realtime.connection_token(request.user.get_username())})


@require_POST
@login_required_json
def send(request: HttpRequest) -> HttpResponse:
    """Validate ``{"text": ...}`` and publish it, with the author, to the lobby."""
    try:
        payload = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        return JsonResponse({"error": "the body must be JSON"}, status=400)
    text = payload.get("text") if isinstance(payload, dict) else None
    if not isinstance(text, str) or not text.strip():
        return JsonResponse({"error": "text must be a non-empty string"}, status=400)
    text = text.strip()
    if len(text) > MAX_TEXT_LENGTH:
        return JsonResponse({"error": f"text is longer than {MAX_TEXT_LENGTH}"}, status=400)
    try:
        offset = realtime.publish_message(request.user.get_username(), text)
    except CentError as exc:
        logger.warning("publishing to tidings failed: %r", exc)
        return JsonResponse({"error": "the real-time service is unavailable"}, status=502)
    return JsonResponse({"ok": True, "offset": offset})
