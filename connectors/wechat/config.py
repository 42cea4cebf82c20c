"""The wechat section of the configuration, validated strictly.

Admins write it (secrets resolved by the gateway from the environment or
files), so unknown keys are errors: a typo fails loudly at start-up as
:class:`Fatal` with the path of the bad key. :func:`load` and
:func:`check_aes_key` are shared with the WeCom section.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal, Mapping, TypeVar

import msgspec

from connectors.base import Fatal
from connectors.wechat.safexml import MAX_XML_BYTES

C = TypeVar("C", bound=msgspec.Struct)


class OaAccount(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    appid: str
    app_secret: str
    token: str
    encoding_aes_key: str | None = None  # absent: plain mode only
    #: The account's 消息加解密方式. ``compatible`` and ``safe`` refuse a body
    #: without ``<Encrypt>``; default: ``safe`` with an AES key, else ``plain``.
    mode: Literal["plain", "compatible", "safe"] | None = None

    @property
    def effective_mode(self) -> str:
        return self.mode or ("safe" if self.encoding_aes_key else "plain")


class WeChatConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    accounts: dict[str, OaAccount]
    api_base: str = "https://api.weixin.qq.com"
    max_body_bytes: int = MAX_XML_BYTES
    #: Callbacks whose timestamp is further than this from the clock are refused.
    replay_window_s: int = 300


def check_aes_key(key: str | None, where: str) -> None:
    """An EncodingAESKey is 43 base64 characters: 32 bytes once '=' is added."""
    if key is None:
        return
    try:
        ok = len(key) == 43 and len(base64.b64decode(key + "=", validate=True)) == 32
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise Fatal(f"{where}.encoding_aes_key must be 43 base64 characters (the platform's EncodingAESKey)")


def load(kind: type[C], section: Mapping[str, Any], channel: str) -> C:
    """Decode a config section into its Struct; any error is Fatal and names the key."""
    try:
        config = msgspec.convert(dict(section), kind)
    except msgspec.ValidationError as exc:
        raise Fatal(f"{channel} config: {exc}") from None
    accounts = getattr(config, "accounts", None)
    if not accounts:
        raise Fatal(f"{channel} config: accounts is empty; add at least one account")
    if getattr(config, "max_body_bytes", 1) <= 0:
        raise Fatal(f"{channel} config: max_body_bytes must be positive")
    if getattr(config, "replay_window_s", 1) <= 0:
        raise Fatal(f"{channel} config: replay_window_s must be positive")
    for name, account in accounts.items():
        check_aes_key(account.encoding_aes_key, f"{channel}.accounts.{name}")
        if getattr(account, "mode", None) in ("compatible", "safe") and not account.encoding_aes_key:
            raise Fatal(f"{channel}.accounts.{name}: mode {account.mode} needs encoding_aes_key")
    return config


def load_wechat(section: Mapping[str, Any]) -> WeChatConfig:
    config = load(WeChatConfig, section, "wechat")
    seen: dict[str, str] = {}
    for name, account in config.accounts.items():
        if account.appid in seen:
            raise Fatal(f"wechat config: accounts {seen[account.appid]} and {name} share appid {account.appid}")
        seen[account.appid] = name
    return config
