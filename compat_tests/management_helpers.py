"""Driving the management API: a small JSON client over real HTTP, and rabbitmqadmin.

rabbitmqadmin is RabbitMQ's own client script, shipped in Debian's rabbitmq-server package.
It is not installed: `rabbitmqadmin_path()` downloads the package with `apt-get download`
into the repository's .cache/ (once; `apt-get update` first when the package lists are
empty, as on a fresh machine) and extracts the script with `dpkg-deb -x`.
"""

from __future__ import annotations

import base64
import json
import pathlib
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

CACHE = pathlib.Path(__file__).resolve().parent.parent / ".cache" / "rabbitmqadmin"
SCRIPT = "usr/bin/rabbitmqadmin"


def quote(name: str) -> str:
    """A vhost or object name as a path segment ("/" is "%2F")."""
    return urllib.parse.quote(name, safe="")


class Api:
    """JSON over HTTP with basic auth; every call returns (status, decoded body or None)."""

    def __init__(self, broker: Any, user: str = "guest", password: str = "guest") -> None:
        self.base = f"http://{broker.host}:{broker.management_port}"
        self.user = user
        self.password = password

    def as_user(self, user: str, password: str) -> Api:
        other = Api.__new__(Api)
        other.base, other.user, other.password = self.base, user, password
        return other

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", "Basic " + token)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, payload = error.code, error.read()
        return status, json.loads(payload) if payload else None

    def get(self, path: str) -> Any:
        """The body of a GET that must succeed."""
        status, body = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    def put(self, path: str, body: Any) -> int:
        return self.call("PUT", path, body)[0]

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return self.call("POST", path, body)

    def delete(self, path: str) -> int:
        return self.call("DELETE", path)[0]


def _run(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)


def rabbitmqadmin_path() -> pathlib.Path:
    """The rabbitmqadmin script of Debian's rabbitmq-server package, fetched once."""
    script = CACHE / "root" / SCRIPT
    if script.exists():
        return script
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is needed to fetch rabbitmqadmin (a Debian machine)")
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob("*.deb"):
        old.unlink()
    fetched = _run("apt-get", "download", "rabbitmq-server", cwd=CACHE)
    if fetched.returncode != 0:
        # A fresh machine has no package lists yet.
        updated = _run("apt-get", "update", cwd=CACHE)
        if updated.returncode != 0:
            raise RuntimeError(f"apt-get update failed:\n{updated.stderr}")
        fetched = _run("apt-get", "download", "rabbitmq-server", cwd=CACHE)
    debs = sorted(CACHE.glob("rabbitmq-server_*.deb"))
    if fetched.returncode != 0 or not debs:
        raise RuntimeError(f"apt-get download rabbitmq-server failed:\n{fetched.stderr}")
    extracted = _run("dpkg-deb", "-x", str(debs[-1]), "root", cwd=CACHE)
    if extracted.returncode != 0 or not script.exists():
        raise RuntimeError(f"dpkg-deb -x failed:\n{extracted.stderr}")
    return script


class RabbitmqAdmin:
    """rabbitmqadmin run against a broker's management port."""

    def __init__(
        self, script: pathlib.Path, broker: Any, user: str = "guest", password: str = "guest"
    ) -> None:
        self.script = script
        self.base = [
            "-H",
            broker.host,
            "-P",
            str(broker.management_port),
            "-u",
            user,
            "-p",
            password,
        ]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, str(self.script), *self.base, *args],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"rabbitmqadmin {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def json(self, *args: str) -> Any:
        """A list or show command's answer, as rabbitmqadmin prints it with -f raw_json."""
        return json.loads(self.run("-f", "raw_json", *args).stdout)
