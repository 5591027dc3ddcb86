"""Password hashes in RabbitMQ's formats, and the slowing and logging of refused logins."""

from __future__ import annotations

import logging

import pytest

from broker.core.auth import check_password, hash_password, split_stored, stored_hash
from broker.core.errors import InvalidArgument
from broker.login_guard import FORGET_AFTER, LOG_INTERVAL, MAX_DELAY, LoginGuard
from broker.protocols.transport import is_loopback

# Worked examples of RabbitMQ's scheme (salt 908DC60A / CAD5089B, as in its documentation
# and mailing list): base64(salt + digest(salt + UTF-8 password)).
SHA256_TEST12 = "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
MD5_SIMON = "ytUIm8s3AnKsXQjptplKFytfVxI="


def test_hashes_match_rabbitmq_worked_examples() -> None:
    assert hash_password("test12", bytes.fromhex("908DC60A")) == SHA256_TEST12
    md5 = hash_password("simon", bytes.fromhex("CAD5089B"), "rabbit_password_hashing_md5")
    assert md5 == MD5_SIMON


def test_stored_hashes_of_each_algorithm_verify() -> None:
    assert check_password("test12", stored_hash("rabbit_password_hashing_sha256", SHA256_TEST12))
    md5 = stored_hash("rabbit_password_hashing_md5", MD5_SIMON)
    assert check_password("simon", md5) and not check_password("simon2", md5)
    assert split_stored(md5) == ("rabbit_password_hashing_md5", MD5_SIMON)
    sha512 = hash_password("pw", b"abcd", "rabbit_password_hashing_sha512")
    stored = stored_hash("rabbit_password_hashing_sha512", sha512)
    assert check_password("pw", stored) and not check_password("pw", sha512)


def test_passwords_that_do_not_match_are_refused() -> None:
    assert not check_password("test13", SHA256_TEST12)
    assert not check_password("", "")  # RabbitMQ's user without a password
    assert not check_password("x", "not base64!")


@pytest.mark.parametrize(
    "algorithm, password_hash, error",
    [
        ("bcrypt", SHA256_TEST12, "unsupported hashing_algorithm"),
        ("rabbit_password_hashing_sha256", "!!", "not base64"),
        ("rabbit_password_hashing_sha256", MD5_SIMON, "not a rabbit_password_hashing_sha256"),
    ],
)
def test_hashes_we_cannot_verify_are_refused(
    algorithm: str, password_hash: str, error: str
) -> None:
    with pytest.raises(InvalidArgument, match=error):
        stored_hash(algorithm, password_hash)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refuse(guard: LoginGuard, source: str) -> float:
    guard.refused("u", source, "bad")
    return guard.delay(source)


def test_refusals_from_one_address_wait_longer_each_time_up_to_a_cap() -> None:
    clock = Clock()
    guard = LoginGuard(clock)
    delays = [refuse(guard, "10.0.0.1") for _ in range(8)]
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, MAX_DELAY, MAX_DELAY]
    assert refuse(guard, "10.0.0.2") == 0.0  # another address: not slowed
    clock.now += FORGET_AFTER + 1
    assert refuse(guard, "10.0.0.1") == 0.0  # forgotten after a quiet minute
    assert refuse(guard, "10.0.0.1") == 0.1


def test_refusals_are_logged_once_per_address_and_interval(caplog) -> None:
    clock = Clock()
    guard = LoginGuard(clock)
    with caplog.at_level(logging.WARNING, "broker.login_guard"):
        for _ in range(5):
            guard.refused("u", "10.0.0.1", "bad")
        guard.refused("v", "10.0.0.2", "bad")
        clock.now += LOG_INTERVAL
        guard.refused("u", "10.0.0.1", "bad")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "login refused for user 'u' from 10.0.0.1: bad",
        "login refused for user 'v' from 10.0.0.2: bad",
        "login refused for user 'u' from 10.0.0.1: bad (4 more refused from this address)",
    ]


def test_the_least_recently_failing_addresses_are_forgotten_first(monkeypatch) -> None:
    monkeypatch.setattr("broker.login_guard.MAX_SOURCES", 2)
    guard = LoginGuard(Clock())
    for source in ("a", "a", "b", "a", "c"):  # "b" is the oldest when "c" comes
        guard.refused("u", source, "bad")
    assert refuse(guard, "a") == 0.4  # its fourth refusal
    assert refuse(guard, "b") == 0.0  # as if it had never failed


@pytest.mark.parametrize(
    "peer, loopback",
    [
        (("127.0.0.1", 1), True),
        (("127.0.0.2", 1), True),
        (("::1", 1, 0, 0), True),
        (("192.0.2.7", 1), False),
        (("fe80::1%eth0", 1, 0, 2), False),
        (None, False),
    ],
)
def test_loopback_addresses_are_those_guest_may_use(peer: object, loopback: bool) -> None:
    assert is_loopback(peer) is loopback
