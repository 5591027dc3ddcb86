"""Node configuration: embedded defaults, an optional TOML file, then command-line flags."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


@dataclass
class Config:
    data_dir: str = "./broker-data"
    host: str = "0.0.0.0"
    amqp_port: int = 5672
    heartbeat: int = 60
    frame_max: int = 131072
    channel_max: int = 2047
    handshake_timeout: float = 10.0
    #: publishers are blocked while free disk space is below this many bytes
    disk_free_limit: int = 50_000_000
    #: publishers are blocked while the process uses more memory than this (0: 40% of RAM)
    memory_high_watermark: int = 0
    default_user: str = "guest"
    default_password: str = "guest"
    #: users that may only connect from loopback addresses, as RabbitMQ does for guest
    loopback_users: tuple[str, ...] = ("guest",)
    log_level: str = "info"

    @classmethod
    def load(cls, path: str | None, overrides: dict[str, Any]) -> Config:
        values: dict[str, Any] = {}
        if path:
            with Path(path).open("rb") as f:
                raw = tomllib.load(f)
            names = {f.name for f in fields(cls)}
            for key, value in raw.items():
                key = key.replace("-", "_")
                if key not in names:
                    raise ValueError(f"unknown configuration key '{key}' in {path}")
                values[key] = tuple(value) if isinstance(value, list) else value
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
