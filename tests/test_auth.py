"""Password hashes in RabbitMQ's formats."""

from __future__ import annotations

import pytest

from broker.core.auth import check_password, hash_password, split_stored, stored_hash
from broker.core.errors import InvalidArgument

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
