"""Configuration precedence: embedded defaults, then the TOML file, then flags."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from broker.cli import main
from broker.config import Config


def test_defaults_match_the_documented_ones() -> None:
    cfg = Config.load(None, {})
    assert (cfg.data_dir, cfg.amqp_port, cfg.heartbeat) == ("./broker-data", 5672, 60)
    assert cfg.loopback_users == ("guest",)


def test_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text('data-dir = "/srv/b"\namqp_port = 5700\nloopback_users = []\n')
    cfg = Config.load(str(path), {"amqp_port": 5800, "heartbeat": None})
    assert cfg.data_dir == "/srv/b"
    assert cfg.amqp_port == 5800  # the flag wins
    assert cfg.heartbeat == 60  # an absent flag keeps the file's or default value
    assert cfg.loopback_users == ()


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text("amqp_prot = 1\n")
    with pytest.raises(ValueError, match="amqp_prot"):
        Config.load(str(path), {})


def test_a_configuration_that_cannot_work_is_refused_in_one_line(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("")
    key.write_text("")
    args = ["serve", "--data-dir", str(tmp_path / "data"), "--tls-cert", str(cert)]
    result = CliRunner().invoke(main, [*args, "--tls-key", str(key), "--tls-verify-peer"])
    assert result.exit_code == 2
    assert "needs tls_ca (--tls-ca)" in result.output
    assert "Traceback" not in result.output
    (tmp_path / "broker.toml").write_text("amqp_prot = 1\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(tmp_path / "broker.toml")])
    assert result.exit_code == 2
    assert "unknown configuration key 'amqp_prot'" in result.output
