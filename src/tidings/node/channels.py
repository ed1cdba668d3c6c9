"""What a channel name says: its namespace, whether it is private, who may use it.

``ns:name`` is in namespace ``ns``; a leading ``$`` makes a channel private (a
subscription token is required), and is not part of the namespace
(``$ns:name`` is a private channel of ``ns``). With
``allow_user_limited_channels``, ``dialog#42,43`` is only for users 42 and 43.
These are Centrifugo's rules.
"""

from __future__ import annotations

from ..options import ChannelOptions, Config
from ..protocol.codes import Error, ErrorCode

__all__ = ["channel_options", "is_private", "namespace_of", "user_allowed"]

NAMESPACE_SEPARATOR = ":"
PRIVATE_PREFIX = "$"
USER_BOUNDARY = "#"
USER_SEPARATOR = ","


def namespace_of(channel: str) -> str:
    name = channel.removeprefix(PRIVATE_PREFIX)
    namespace, separator, _ = name.partition(NAMESPACE_SEPARATOR)
    return namespace if separator else ""


def channel_options(config: Config, channel: str) -> ChannelOptions:
    """Return the options of the channel's namespace.

    Raises:
        Error: 102 (unknown channel) when the namespace is not configured.
    """
    namespace = namespace_of(channel)
    if not namespace:
        return config.channel
    options = config.namespaces.get(namespace)
    if options is None:
        raise Error(ErrorCode.UNKNOWN_CHANNEL)
    return options


def is_private(channel: str) -> bool:
    return channel.startswith(PRIVATE_PREFIX)


def is_user_limited(channel: str, options: ChannelOptions) -> bool:
    return options.allow_user_limited_channels and USER_BOUNDARY in channel


def user_allowed(channel: str, user: str) -> bool:
    """Whether ``user`` is listed after the channel's last ``#``."""
    _, boundary, users = channel.rpartition(USER_BOUNDARY)
    return bool(boundary) and user != "" and user in users.split(USER_SEPARATOR)
