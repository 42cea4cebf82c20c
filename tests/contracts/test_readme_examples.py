"""Every YAML configuration example of the README loads and builds a gateway
exactly as written, once the secret files it names exist (a newcomer copies
them)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import yaml

from gateway import keys
from gateway.app import create_app
from gateway.config import load

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
WHSEC = "whsec_" + base64.b64encode(b"s" * 24).decode()
AES_KEY = base64.b64encode(b"k" * 32).decode().rstrip("=")  # 43 characters


def _with_secret_files(node, tmp: Path, path: tuple = ()) -> None:
    """Each ``*_file`` path of the example pointed at a file holding a plausible secret."""
    if not isinstance(node, dict):
        return
    for key, value in list(node.items()):
        if isinstance(value, str) and key.endswith("_file"):
            f = tmp / "_".join((*path, key))
            f.write_text(WHSEC if path[:1] == ("webhooks",) else AES_KEY if "aes" in key else "s3cret-value")
            node[key] = str(f)
        else:
            _with_secret_files(value, tmp, (*path, key))


def test_the_readme_has_configuration_examples() -> None:
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("block", BLOCKS, ids=[b.split(":", 1)[0] + str(i) for i, b in enumerate(BLOCKS)])
async def test_a_readme_configuration_example_builds_a_gateway(block, tmp_path) -> None:
    doc = yaml.safe_load(block)
    _with_secret_files(doc, tmp_path)
    config_file = tmp_path / "omnigate.yaml"
    config_file.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    env = {"OMNIGATE_API_TOKEN": "t", "OMNIGATE_DATA_DIR": str(tmp_path / "data"),
           "OMNIGATE_RULES_DIR": str(tmp_path / "no-rules")}
    if block.startswith("phone:"):  # its comment: the secrets come from the environment
        env |= {"OMNIGATE_PHONE__ACCOUNTS__PBX1__UPLOAD_TOKEN": "u", "OMNIGATE_PHONE__ACCOUNTS__FS1__PASSWORD": "p",
                "OMNIGATE_PHONE__ACCOUNTS__MAIN__AUTH_TOKEN": "a"}
    app = create_app(load(str(config_file), environ=env))
    channels = set(doc) - {"webhooks", "desks", "trusted_proxies"}
    assert channels <= set(app[keys.CONNECTORS]), channels - set(app[keys.CONNECTORS])
