"""CONTRACTS.md "Running": the configuration keys the contract names."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load


def test_public_url_comes_from_the_environment_and_the_yaml(tmp_path) -> None:
    assert load(None, environ={"OMNIGATE_PUBLIC_URL": "https://support.example.com"}).public_url \
        == "https://support.example.com"
    f = tmp_path / "omnigate.yaml"
    f.write_text("public_url: https://gw.example.cn/omnigate\n", encoding="utf-8")
    assert load(str(f), environ={}).public_url == "https://gw.example.cn/omnigate"
    assert load(str(f), environ={"OMNIGATE_PUBLIC_URL": "https://env.example.cn"}).public_url == "https://env.example.cn"
    assert load(None, environ={}).public_url is None


@pytest.mark.parametrize("value", ["support.example.com", "ftp://x.example.com", "https://", "https://a b.example"])
def test_a_public_url_that_is_not_an_http_url_is_refused_naming_the_key(value) -> None:
    with pytest.raises(ConfigError, match="public_url"):
        load(None, environ={"OMNIGATE_PUBLIC_URL": value})


def test_the_contract_defaults() -> None:
    config = load(None, environ={})
    assert (config.listen, config.data_dir, config.timezone) == ("127.0.0.1:8686", "./omnigate-data", "Asia/Shanghai")
    assert config.api_token is None and config.redis_url is None and config.trusted_proxies == []


def test_flag_beats_environment_beats_yaml(tmp_path) -> None:
    f = tmp_path / "omnigate.yaml"
    f.write_text("listen: 127.0.0.1:1001\ntimezone: Europe/Paris\n", encoding="utf-8")
    env = {"OMNIGATE_LISTEN": "127.0.0.1:1002"}
    assert load(str(f), environ={}).listen == "127.0.0.1:1001"
    assert load(str(f), environ=env).listen == "127.0.0.1:1002"
    assert load(str(f), environ=env, flags={"listen": "127.0.0.1:1003"}).listen == "127.0.0.1:1003"
    assert load(str(f), environ=env).timezone == "Europe/Paris"
