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
    f.write_text("listen: 127.0.0.1:1111\ndata_dir: /yaml\ntimezone: Europe/Berlin\nemail:\n  smtp:\n    max_bytes: 25\n")
    env = {"OMNIGATE_LISTEN": "127.0.0.1:2222", "OMNIGATE_DATA_DIR": "/env", "OMNIGATE_EMAIL__SMTP__MAX_BYTES": "2525"}
    c = load(str(f), environ=env, flags={"listen": "127.0.0.1:3333", "data_dir": None}, channel_names=CH)
    assert (c.listen, c.data_dir, c.timezone) == ("127.0.0.1:3333", "/env", "Europe/Berlin")
    # the SMTP listener without a listen binds the host HTTP binds (the container: all interfaces)
    assert c.channels["email"] == {"smtp": {"max_bytes": "2525", "listen": "127.0.0.1:2525"}}


def test_secrets_from_files_and_never_from_yaml(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    assert load(None, environ={"OMNIGATE_API_TOKEN_FILE": str(secret)}, channel_names=CH).api_token == "s3cret"
    f = tmp_path / "c.yaml"
    f.write_text(f"wechat:\n  accounts:\n    main:\n      appid: wx1\n      token_file: {secret}\n      app_secret_file: {secret}\n")
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


CHANNELS = frozenset({"email", "wechat", "wecom", "telegram"})


@pytest.mark.parametrize(
    "yaml_text, line, where, env, file_key",
    [
        ("wechat:\n  accounts:\n    main:\n      appid: wx1\n      token: t0ken\n", 5,
         "wechat.accounts.main.token", "OMNIGATE_WECHAT__ACCOUNTS__MAIN__TOKEN", "wechat.accounts.main.token_file"),
        ("wechat:\n  accounts:\n    main:\n      encoding_aes_key: k\n", 4,
         "wechat.accounts.main.encoding_aes_key", "OMNIGATE_WECHAT__ACCOUNTS__MAIN__ENCODING_AES_KEY",
         "encoding_aes_key_file"),
        ("wechat:\n  accounts:\n    main:\n      app_secret: s\n", 4, "app_secret", "APP_SECRET", "app_secret_file"),
        ("telegram:\n  bots:\n    shop:\n      mode: webhook\n      token: '1:abc'\n", 5,
         "telegram.bots.shop.token", "OMNIGATE_TELEGRAM__BOTS__SHOP__TOKEN", "telegram.bots.shop.token_file"),
        ("telegram:\n  bots:\n    shop:\n      secret_token: abc\n", 4, "secret_token", "SECRET_TOKEN", "secret_token_file"),
        ("email:\n  imap:\n    support:\n      host: h\n      password: pw\n", 5,
         "email.imap.support.password", "OMNIGATE_EMAIL__IMAP__SUPPORT__PASSWORD", "password_file"),
        ("email:\n  relay:\n    host: h\n    password: pw\n", 4, "email.relay.password",
         "OMNIGATE_EMAIL__RELAY__PASSWORD", "email.relay.password_file"),
        ("wecom:\n  accounts:\n    kf:\n      secret: s\n", 4, "wecom.accounts.kf.secret",
         "OMNIGATE_WECOM__ACCOUNTS__KF__SECRET", "secret_file"),
    ],
)
def test_every_manifest_secret_is_refused_in_the_yaml_with_file_line(tmp_path, yaml_text, line, where, env, file_key):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as exc:
        load(str(f), environ={}, channel_names=CHANNELS)
    message = str(exc.value)
    assert message.startswith(f"{f}:{line}: ") and "is a secret" in message
    assert where in message and env in message and file_key in message


def test_a_secret_refusal_names_the_account_and_never_the_value(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("wechat:\n  accounts:\n    shop_cn:\n      token: hunter2\n")
    with pytest.raises(ConfigError) as exc:
        load(str(f), environ={}, channel_names=CHANNELS)
    assert "account 'shop_cn'" in str(exc.value) and "hunter2" not in str(exc.value)


def test_secrets_through_file_keys_and_path_options_are_accepted(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    f = tmp_path / "c.yaml"
    f.write_text(f"email:\n  relay:\n    host: h\n    password_file: {secret}\n    ca_file: /etc/ca.pem\n"
                 f"  smtp:\n    tls_cert: /c.pem\n    tls_key: /k.pem\n")
    email = load(str(f), environ={}, channel_names=CHANNELS).channels["email"]
    assert email["relay"] == {"host": "h", "password": "pw", "ca_file": "/etc/ca.pem"}
    assert email["smtp"]["tls_key"] == "/k.pem"


@pytest.mark.parametrize(
    "yaml_text, line, suggestion",
    [
        ("listen: 127.0.0.1:1\ndata_dri: /x\n", 2, "'data_dir'"),
        ("store:\n  synchronus: full\n", 2, "'synchronous'"),
        ("pipeline:\n  worker: 4\n", 2, "'workers'"),
        ("dedupe:\n  near_windw: 5m\n", 2, "'near_window'"),
        ("threading:\n\n  reopen_windows: {}\n", 3, "'reopen_window'"),
        ("rest:\n  rate_limit_per_minut: 10\n", 2, "'rate_limit_per_minute'"),
        ("email:\n  smtp:\n    listn: 127.0.0.1:25\n", 3, "'listen'"),
        ("email:\n  imap:\n    support:\n      hots: h\n", 4, "'host'"),
        ("wechat:\n  api_bse: http://x\n", 2, "'api_base'"),
        ("wechatt:\n  accounts: {}\n", 1, "'wechat'"),
    ],
)
def test_typos_answer_with_file_line_and_the_closest_key(tmp_path, yaml_text, line, suggestion):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as exc:
        load(str(f), environ={}, channel_names=CHANNELS)
    assert str(exc.value).startswith(f"{f}:{line}: unknown key") and f"did you mean {suggestion}" in str(exc.value)


def test_redis_url_is_taken_and_refused_with_what_does_not_run_on_redis_yet(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("listen: 127.0.0.1:1\nredis_url: redis://localhost:6379/0\nstore:\n  redis_claim_idle_s: 5\n")
    config = load(str(f), environ={}, channel_names=CHANNELS)
    assert (config.redis_url, config.store.redis_claim_idle_s, config.store.redis_prefix) == \
        ("redis://localhost:6379/0", 5, "og:")
    assert load(None, environ={"OMNIGATE_REDIS_URL": "redis://r:1/0"}, channel_names=CHANNELS).redis_url == "redis://r:1/0"
    with pytest.raises(ConfigError, match="redis_url must be redis://"):
        load(None, environ={"OMNIGATE_REDIS_URL": "http://localhost"}, channel_names=CHANNELS)
    # assignment and SLAs run on Redis (gateway/store/redis_assign.py): a directory is taken
    assert load(None, environ={"OMNIGATE_REDIS_URL": "redis://r:1/0", "OMNIGATE_DIRECTORY": "d.yaml"},
                channel_names=CHANNELS).directory == "d.yaml"
    f.write_text("redis_url: redis://localhost:6379/0\nwebhooks:\n  endpoints:\n    crm:\n"
                 "      url: https://crm.example/hook\n")
    secret = {"OMNIGATE_WEBHOOKS__ENDPOINTS__CRM__SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
    assert list(load(str(f), environ=secret, channel_names=CHANNELS).webhooks.endpoints) == ["crm"]  # runs on Redis
    f.write_text("redis_url: redis://localhost:6379/0\ndesks:\n  d:\n    kind: generic\n"
                 "    url: https://desk.example/api\n")
    assert list(load(str(f), environ={}, channel_names=CHANNELS).desks) == ["d"]  # runs on Redis


def _struct_paths(kind, prefix=()):
    import typing

    import msgspec

    out = set()
    for name, field_type in zip(kind.__struct_encode_fields__, typing.get_type_hints(kind).values()):
        path = (*prefix, name)
        out.add(path)
        union = typing.get_origin(field_type) in (typing.Union, __import__("types").UnionType)
        for arg in typing.get_args(field_type) if union else (field_type,):
            if isinstance(arg, type) and issubclass(arg, msgspec.Struct):
                out |= _struct_paths(arg, path)
            elif typing.get_origin(arg) is dict:
                value = typing.get_args(arg)[1]
                if isinstance(value, type) and issubclass(value, msgspec.Struct):
                    out |= _struct_paths(value, (*path, "*"))
    return out


@pytest.mark.parametrize("channel", ["email", "wechat", "wecom", "telegram", "whatsapp", "messenger", "instagram",
                                     "line", "phone"])
def test_manifest_options_list_every_key_the_connector_takes(channel):
    """The typo check and the README tables read the manifests: a key a
    connector takes but its manifest lacks would be refused as a typo."""
    from connectors.registry import manifests

    names = {tuple("*" if s.startswith("<") else s for s in n.split(".")) for n in manifests()[channel].options}
    if channel == "email":
        from connectors.email.settings import EmailSettings as kind
    elif channel == "wechat":
        from connectors.wechat.config import WeChatConfig as kind
    elif channel == "wecom":
        from connectors.wecom.config import WeComConfig as kind
    elif channel == "phone":
        from connectors.phone.client import PhoneConfig as kind
    elif channel == "whatsapp":
        from connectors.whatsapp.client import _Section as kind
    elif channel == "messenger":
        from connectors.messenger.client import MessengerSection as kind
    elif channel == "instagram":
        from connectors.messenger.client import InstagramSection as kind
    elif channel == "line":
        from connectors.line.client import _Section as kind
    else:
        from connectors.telegram.client import BotConfig, _Section as kind

        assert {("bots", "*", f) for f in BotConfig.__struct_fields__} <= names  # bots are dicts, checked one by one
        names = {n for n in names if len(n) == 1 or n[0] != "bots"} | {("bots",)}
    wanted = _struct_paths(kind)
    leaves = {p for p in wanted if not any(q[: len(p)] == p and q != p for q in wanted)}
    listed = {n for n in names if len(n) > 1} | {n for n in names if len(n) == 1}
    missing = {p for p in leaves if p not in listed and not (len(p) > 1 and (p[-1],) in listed)}
    assert not missing, f"{channel} manifest lacks {sorted('.'.join(p) for p in missing)}"


def test_a_one_segment_manifest_secret_is_found_at_any_depth(tmp_path, monkeypatch):
    """A manifest option ``token`` (no path) marks every ``token`` key of the section."""
    from connectors import registry
    from connectors.registry import Manifest

    plugin = Manifest(channel="chatx", transport="webhook", parser="x:y",
                      options={"token": {"secret": True}, "teams": {"secret": False}})
    monkeypatch.setattr(registry, "manifests", lambda: {"chatx": plugin})
    f = tmp_path / "c.yaml"
    f.write_text("chatx:\n  teams:\n    a:\n      nested:\n        token: x\n")
    with pytest.raises(ConfigError, match=r"c.yaml:5: chatx.teams.a.nested.token .*is a secret"):
        load(str(f), environ={}, channel_names=frozenset({"chatx"}))


def test_a_missing_secret_names_the_account_and_where_to_put_it(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("wechat:\n  accounts:\n    main:\n      appid: wx1\n      app_secret_file: /dev/null\n")
    with pytest.raises(ConfigError) as exc:
        load(str(f), environ={}, channel_names=CHANNELS)
    assert str(exc.value) == (
        f"{f}:3: wechat.accounts.main (account 'main') lacks its token, a secret: put the path of a file holding "
        "it in wechat.accounts.main.token_file, or set OMNIGATE_WECHAT__ACCOUNTS__MAIN__TOKEN "
        "(or OMNIGATE_WECHAT__ACCOUNTS__MAIN__TOKEN_FILE)")
    env = {"OMNIGATE_WECHAT__ACCOUNTS__MAIN__TOKEN": "t"}
    assert load(str(f), environ=env, channel_names=CHANNELS).channels["wechat"]["accounts"]["main"]["token"] == "t"
    f.write_text("email:\n  imap:\n    sales:\n      host: h\n      user: u\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3: email.imap.sales \(account 'sales'\) lacks its password.*"
                                          r"email.imap.sales.password_file.*OMNIGATE_EMAIL__IMAP__SALES__PASSWORD"):
        load(str(f), environ={}, channel_names=CHANNELS)


def test_the_shared_attachments_folder_belongs_to_redis_deployments():
    env = {"OMNIGATE_STORE__ATTACHMENTS_DIR": "/mnt/shared/attachments"}
    with pytest.raises(ConfigError, match="store.attachments_dir is the shared folder of a redis_url deployment"):
        load(None, environ=env, channel_names=CHANNELS)
    config = load(None, environ={**env, "OMNIGATE_REDIS_URL": "redis://r:1/0",
                                 "OMNIGATE_STORE__REDIS_ATTACHMENT_MAX_BYTES": "4096"}, channel_names=CHANNELS)
    assert (config.store.attachments_dir, config.store.redis_attachment_max_bytes) == ("/mnt/shared/attachments", 4096)
