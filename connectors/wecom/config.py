"""The wecom section of the configuration, validated strictly (see connectors.wechat.config)."""

from __future__ import annotations

from typing import Any, Literal, Mapping

import msgspec

from connectors.wechat.config import load
from connectors.wechat.safexml import MAX_XML_BYTES


class WeComAccount(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One callback configuration: a self-built app, or 微信客服 (its own secret)."""

    corp_id: str
    secret: str
    token: str
    encoding_aes_key: str
    open_kfid: str | None = None  # default 微信客服 account for pulls and replies
    agent_id: int | None = None  # the app's AgentId, to reply to employees
    #: WeCom signs only encrypted callbacks: ``safe`` is the one mode there is
    #: (stated for symmetry with the wechat section; a plain body is refused).
    mode: Literal["safe"] = "safe"


class WeComConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    accounts: dict[str, WeComAccount]
    api_base: str = "https://qyapi.weixin.qq.com"
    max_body_bytes: int = MAX_XML_BYTES
    kf_pull_wait_s: float = 3.0  # < WeCom's 5 s callback timeout
    #: Callbacks whose timestamp is further than this from the clock are refused.
    replay_window_s: int = 300


def load_wecom(section: Mapping[str, Any]) -> WeComConfig:
    return load(WeComConfig, section, "wecom")
