"""Tests for tidings.node.channels: namespaces, private channels and user-limited channels."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings import ChannelOptions, Config, Error, ErrorCode, load_config
from tidings.node.channels import (
    channel_options,
    is_private,
    is_user_limited,
    namespace_of,
    user_allowed,
)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "tidings.toml"
    path.write_text(
        "presence = true\n"
        "[namespaces.chat]\n"
        "join_leave = true\n"
        "allow_user_limited_channels = true\n"
        "[namespaces.feed]\n"
        "history_size = 10\n"
        "history_ttl = '1m'\n",
        encoding="utf-8",
    )
    return load_config(path, env={})


# -- namespace_of ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "namespace"),
    [
        ("news", ""),
        ("chat:room", "chat"),
        ("chat:", "chat"),
        ("chat:a:b", "chat"),
        ("$chat:room", "chat"),
        ("$room", ""),
        ("chat:dialog#42,43", "chat"),
        ("dialog#42,43", ""),
        ("feed.v2:item", "feed.v2"),
        ("", ""),
        ("$", ""),
        (":room", ""),
    ],
)
def test_namespace_of_is_the_part_before_the_first_colon_without_the_private_prefix(
    channel: str, namespace: str
) -> None:
    assert namespace_of(channel) == namespace


# -- channel_options ------------------------------------------------------------------------------


def test_a_channel_without_a_namespace_gets_the_top_level_options(config: Config) -> None:
    assert channel_options(config, "news") is config.channel
    assert channel_options(config, "news").presence is True


def test_a_channel_of_a_configured_namespace_gets_that_namespace_options(config: Config) -> None:
    options = channel_options(config, "chat:room")
    assert options is config.namespaces["chat"]
    assert options.join_leave is True
    assert options.presence is False
    assert channel_options(config, "feed:x").history_enabled is True


def test_a_private_channel_gets_the_options_of_its_namespace(config: Config) -> None:
    assert channel_options(config, "$chat:secret") is config.namespaces["chat"]
    assert channel_options(config, "$secret") is config.channel


def test_a_user_limited_channel_gets_the_options_of_its_namespace(config: Config) -> None:
    assert channel_options(config, "chat:dialog#1,2") is config.namespaces["chat"]


@pytest.mark.parametrize("channel", ["unknown:room", "$unknown:room", "Chat:room", "chat.v2:x"])
def test_a_channel_of_an_unknown_namespace_is_error_102_unknown_channel(
    config: Config, channel: str
) -> None:
    with pytest.raises(Error) as caught:
        channel_options(config, channel)
    error = caught.value
    assert error.code == ErrorCode.UNKNOWN_CHANNEL == 102
    assert error.message == "unknown channel"
    assert error.temporary is False
    assert error == Error(102)


def test_dev_mode_does_not_invent_namespaces() -> None:
    config = load_config(env={}, overrides={"dev": True})
    assert channel_options(config, "anything").allow_subscribe_for_anonymous is True
    with pytest.raises(Error) as caught:
        channel_options(config, "chat:room")
    assert caught.value.code == 102


def test_a_namespace_option_set_built_directly_is_found() -> None:
    options = ChannelOptions(presence=True)
    config = Config(namespaces={"ns": options})
    assert channel_options(config, "ns:x") is options
    assert channel_options(config, "x") == ChannelOptions()


# -- is_private -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "private"),
    [
        ("$secret", True),
        ("$chat:secret", True),
        ("$", True),
        ("secret", False),
        ("chat:$secret", False),
        ("chat:room$", False),
        ("", False),
        (" $secret", False),
    ],
)
def test_a_channel_is_private_exactly_when_it_starts_with_a_dollar(
    channel: str, private: bool
) -> None:
    assert is_private(channel) is private


# -- user-limited channels ------------------------------------------------------------------------


def test_a_channel_is_user_limited_only_with_the_option_and_a_hash(config: Config) -> None:
    chat = config.namespaces["chat"]
    assert is_user_limited("chat:dialog#42,43", chat) is True
    assert is_user_limited("chat:dialog", chat) is False
    assert is_user_limited("dialog#42,43", config.channel) is False
    assert is_user_limited("dialog#42", ChannelOptions(allow_user_limited_channels=True)) is True


@pytest.mark.parametrize(
    ("channel", "user", "allowed"),
    [
        ("dialog#42,43", "42", True),
        ("dialog#42,43", "43", True),
        ("dialog#42,43", "44", False),
        ("dialog#42,43", "4", False),
        ("dialog#42,43", "42,43", False),
        ("dialog#42", "42", True),
        ("chat:dialog#42,43", "43", True),
        ("$chat:dialog#42,43", "42", True),
        ("a#1#2", "2", True),
        ("a#1#2", "1", False),
        ("dialog#42, 43", "43", False),
        ("dialog#alice,bob", "bob", True),
        ("dialog#alice,bob", "Bob", False),
    ],
)
def test_only_users_listed_after_the_last_hash_are_allowed(
    channel: str, user: str, allowed: bool
) -> None:
    assert user_allowed(channel, user) is allowed


@pytest.mark.parametrize("channel", ["dialog#42,43", "dialog#", "dialog#,42", "dialog#42,"])
def test_an_anonymous_user_is_never_allowed_in_a_user_limited_channel(channel: str) -> None:
    assert user_allowed(channel, "") is False


def test_a_user_limited_channel_with_an_empty_user_list_allows_nobody() -> None:
    assert user_allowed("dialog#", "42") is False
    assert user_allowed("dialog#", "dialog") is False
