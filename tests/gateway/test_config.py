"""Configuration precedence and secrets (CONTRACTS.md, Running)."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load, parse_duration

CH = frozenset({"email", "wechat"})


def test_defaults():
    c = load(None, environ={}, channel_names=CH)
    assert (c.listen, c.data_dir, c.timezone, c.api_token) == ("127.0.0.1:8686", "./omnigate-data", "Asia/Shanghai", None)


def test_flag_over_env_over_yaml(tmp_path):
    f = tmp_path / "omnigate.yaml"
    f.write_text("listen: 127.0.0.1:1111\ndata_dir: /yaml\ntimezone: Europe/Berlin\nemail:\n  smtp:\n    port: 25\n")
    env = {"OMNIGATE_LISTEN": "127.0.0.1:2222", "OMNIGATE_DATA_DIR": "/env", "OMNIGATE_EMAIL__SMTP__PORT": "2525"}
    c = load(str(f), environ=env, flags={"listen": "127.0.0.1:3333", "data_dir": None}, channel_names=CH)
    assert (c.listen, c.data_dir, c.timezone) == ("127.0.0.1:3333", "/env", "Europe/Berlin")
    assert c.channels["email"] == {"smtp": {"port": "2525"}}


def test_secrets_from_files_and_never_from_yaml(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    assert load(None, environ={"OMNIGATE_API_TOKEN_FILE": str(secret)}, channel_names=CH).api_token == "s3cret"
    f = tmp_path / "c.yaml"
    f.write_text(f"wechat:\n  accounts:\n    main:\n      appid: wx1\n      token_file: {secret}\n")
    assert load(str(f), environ={}, channel_names=CH).channels["wechat"]["accounts"]["main"]["token"] == "s3cret"
    f.write_text("listen: 127.0.0.1:1\napi_token: oops\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: api_token is a secret .* OMNIGATE_API_TOKEN"):
        load(str(f), environ={}, channel_names=CH)


def test_typos_and_bad_values_fail_loudly(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("listn: 127.0.0.1:1\n")
    with pytest.raises(ConfigError, match="listn"):
        load(str(f), environ={}, channel_names=CH)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load(None, environ={"OMNIGATE_LISTEN": "8686"}, channel_names=CH)
    with pytest.raises(ConfigError, match="duration"):
        load(None, environ={"OMNIGATE_DEDUPE__NEAR_WINDOW": "soon"}, channel_names=CH)
    with pytest.raises(ConfigError, match="cannot read"):
        load(None, environ={"OMNIGATE_API_TOKEN_FILE": str(tmp_path / "missing")}, channel_names=CH)
    with pytest.raises(ConfigError, match="cannot read config"):
        load(str(tmp_path / "absent.yaml"), environ={}, channel_names=CH)


def test_durations():
    assert parse_duration("90s") == 90 and parse_duration("1h30m") == 5400 and parse_duration("7d") == 604800
    with pytest.raises(ConfigError):
        parse_duration("7 days")
