"""CMQ request parsing, signatures and replay checks: pure functions, no sockets."""

from __future__ import annotations

import base64
import hmac
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core.model import AccessKey
from broker.protocols.http import signature
from broker.protocols.http.auth import ReplayGuard, authenticate
from broker.protocols.http.errors import CmqError
from broker.protocols.http.params import Params, page, parse_form, parse_request


def module_code(exc: pytest.ExceptionInfo[CmqError]) -> str:
    return exc.value.message.split(")")[0] + ")"


def params(**values: str) -> Params:
    return Params(list(values.items()))


# -- parsing -------------------------------------------------------------------------------


def test_form_body_is_read_without_content_type_and_merged_with_the_query() -> None:
    p = parse_request("POST", "Action=SendMessage", b"queueName=q&msgBody=a+b%26c")
    assert p.text("action") == "SendMessage"
    assert p.text("msgBody") == "a b&c"
    assert p.raw == {"Action": "SendMessage", "queueName": "q", "msgBody": "a b&c"}


def test_get_ignores_the_body() -> None:
    assert parse_request("GET", "", b"queueName=q").optional_text("queueName") is None


@pytest.mark.parametrize("body", [b"%zz=1", b"a=%ff", b"\xff", b"a=1&&b=2", b"=x&"])
def test_malformed_bodies_are_invalid_requests(body: bytes) -> None:
    with pytest.raises(CmqError) as exc:
        parse_request("POST", "", body)
    assert exc.value.code == 4000


@given(st.text(alphabet="ab=&+%2Fe9Cc\u00e9 ", max_size=24))
def test_form_parsing_is_parse_qsl_strict(data: str) -> None:
    try:
        expected = urllib.parse.parse_qsl(
            data, keep_blank_values=True, strict_parsing=True, errors="strict"
        )
    except ValueError as exc:
        with pytest.raises(CmqError) as raised:
            parse_form(data)
        assert raised.value.message.endswith(f"malformed form data ({exc})")
    else:
        assert parse_form(data) == expected


def test_both_case_styles_and_no_duplicates() -> None:
    p = params(QueueName="q", DelaySeconds="5")
    assert p.text("queueName") == "q" and p.integer("delaySeconds", 0, 10) == 5
    with pytest.raises(CmqError) as exc:
        Params([("queueName", "a"), ("QueueName", "b")])
    assert module_code(exc) == "(10330)"


def test_integers_types_and_ranges() -> None:
    p = params(a="12", b="x1", c="99", d=" 7 ", e="\x1e8")
    assert p.integer("a", 0, 20) == 12 and p.integer("d", 0, 10) == 7
    assert p.integer("e", 0, 10) == 8  # stripped as " 7 " is; int() alone would not
    assert p.integer("missing", 0, 1, default=1) == 1
    assert p.optional_integer("missing", 0, 1) is None
    for name, code in (("b", "(10360)"), ("c", "(10350)"), ("missing", "(10390)")):
        with pytest.raises(CmqError) as exc:
            p.integer(name, 0, 20)
        assert module_code(exc) == code


@pytest.mark.parametrize(
    ("indexes", "expected"),
    [((1, 2, 3), ["v1", "v2", "v3"]), ((0, 1), ["v0", "v1"]), ((2, 1), ["v1", "v2"])],
)
def test_arrays_consecutive_from_zero_or_one(indexes: tuple[int, ...], expected: list[str]) -> None:
    p = Params([(f"msgBody.{i}", f"v{i}") for i in indexes])
    assert p.array("msgBody", 16) == expected


@pytest.mark.parametrize(
    ("indexes", "code"),
    [((1, 3), "(10380)"), ((2, 3), "(10380)"), (tuple(range(1, 18)), "(10370)")],
)
def test_array_errors(indexes: tuple[int, ...], code: str) -> None:
    p = Params([(f"msgBody.{i}", "v") for i in indexes])
    with pytest.raises(CmqError) as exc:
        p.array("msgBody", 16)
    assert module_code(exc) == code


def test_array_key_format_and_required() -> None:
    with pytest.raises(CmqError) as exc:
        params(**{"msgBody.one": "x"})
    assert module_code(exc) == "(10310)"
    with pytest.raises(CmqError) as exc:
        params().array("msgBody", 16, required=True)
    assert module_code(exc) == "(10390)"
    assert params().array("msgTag", 5) == []


def test_names() -> None:
    assert params(queueName="Ab-1_c").name("queueName") == "Ab-1_c"
    for bad in ("1a", "a.b", "a" * 65, ""):
        with pytest.raises(CmqError):
            params(queueName=bad).name("queueName")


def test_paging() -> None:
    names = ["b", "a", "c", "amq.gen", "ab"]
    assert page(names, params()) == (4, ["a", "ab", "b", "c"])
    assert page(names, params(searchWord="a", offset="1", limit="1")) == (2, ["ab"])


# -- signatures ----------------------------------------------------------------------------


def test_string_to_sign_matches_the_documented_example_shape() -> None:
    text = signature.string_to_sign(
        "post",
        "cmq-queue-gz.api.qcloud.com",
        "/v2/index.php",
        {"Nonce": "1", "Action": "SendMessage", "msg_Body": "a b", "Signature": "x"},
    )
    assert (
        text
        == "POSTcmq-queue-gz.api.qcloud.com/v2/index.php?Action=SendMessage&Nonce=1&msg.Body=a b"
    )


def test_the_official_sdk_signer_is_accepted() -> None:
    from cmq.sign import Sign

    values = {"Action": "SendMessage", "Nonce": 5, "msgBody": "hi", "SignatureMethod": "HmacSHA256"}
    for method, digest in (("POST", "sha1"), ("GET", "sha256")):
        made = Sign("id", "key").make("h:1", "/v2/index.php", values, method, digest).decode()
        raw = {k: str(v) for k, v in values.items()}
        method_name = "HmacSHA256" if digest == "sha256" else "HmacSHA1"
        assert signature.verify("key", method, "h:1", "/v2/index.php", raw, made, method_name)
        assert not signature.verify("other", method, "h:1", "/v2/index.php", raw, made, method_name)


def test_python_sdk_at_quirk_is_verified_only_on_request() -> None:
    """For POST the SDK leaves values starting with @ out of the signed string: that string
    is checked only when asked (to explain a refusal), the full one is what verifies."""
    from cmq.sign import Sign

    values = {"Action": "SendMessage", "msgBody": "@home"}
    made = Sign("id", "key").make("h", "/v2/index.php", values, "POST").decode()
    assert not signature.verify("key", "POST", "h", "/v2/index.php", values, made, None)
    assert signature.verify("key", "POST", "h", "/v2/index.php", values, made, None, True)
    full = signature.sign("key", signature.string_to_sign("POST", "h", "/v2/index.php", values))
    assert signature.verify("key", "POST", "h", "/v2/index.php", values, full, None)
    assert not signature.verify("key", "POST", "h", "/v2/index.php", values, "é" * 28, None)


def test_a_host_header_that_is_not_utf8_is_signed_as_its_bytes() -> None:
    """aiohttp hands such bytes over as surrogates; the signature covers the bytes sent."""
    values = {"Action": "ListQueue"}
    raw = b"POSTh\x80/v2/index.php?Action=ListQueue"
    made = base64.b64encode(hmac.new(b"key", raw, "sha1").digest()).decode()
    host = b"h\x80".decode("utf-8", "surrogateescape")
    assert signature.verify("key", "POST", host, "/v2/index.php", values, made, None)


def test_a_signature_that_is_not_ascii_is_wrong_not_an_error() -> None:
    values = {"Action": "ListQueue"}
    for wrong in ("é" * 28, "\udc80"):
        assert not signature.verify("key", "POST", "h", "/v2/index.php", values, wrong, None)


# -- authentication ------------------------------------------------------------------------

KEYS = {"AKID1": AccessKey("AKID1", "secret", "/")}


def signed(now: int, nonce: int = 7, **extra: str) -> Params:
    values = {
        "Action": "ListQueue",
        "SecretId": "AKID1",
        "Timestamp": str(now),
        "Nonce": str(nonce),
        **extra,
    }
    text = signature.string_to_sign("POST", "h:80", "/v2/index.php", values)
    values["Signature"] = signature.sign("secret", text)
    return parse_request("POST", "", urllib.parse.urlencode(values).encode())


def auth(p: Params, guard: ReplayGuard, now: int) -> AccessKey:
    def first_use(secret_id: str, stamp: int, nonce: int) -> bool:
        return guard.first_use(secret_id, stamp, nonce, now)

    return authenticate(p, "POST", "h:80", "/v2/index.php", KEYS, first_use, now, guard.skew_s)


def test_authenticate_and_replay() -> None:
    guard = ReplayGuard(300, 100)
    assert auth(signed(1000), guard, 1000).vhost == "/"
    with pytest.raises(CmqError, match="Nonce"):
        auth(signed(1000), guard, 1001)
    assert auth(signed(1000, nonce=8), guard, 1001)
    for stamp in (600, 1400):
        with pytest.raises(CmqError, match="Timestamp") as exc:
            auth(signed(stamp), guard, 1000)
        assert exc.value.code == 4100


def test_an_added_at_value_is_refused_naming_it() -> None:
    """Signed without `msgTag.1=@x` (as the Python SDK would sign it): refused, not run."""
    good = signed(1000)
    p = Params([*good.raw.items(), ("msgTag.1", "@x")])
    with pytest.raises(CmqError, match="msgTag.1 not covered") as exc:
        auth(p, ReplayGuard(300, 100), 1000)
    assert exc.value.code == 4100


def test_authentication_failures() -> None:
    guard = ReplayGuard(300, 100)
    good = signed(1000)
    for change in ({"SecretId": "AKID2"}, {"Timestamp": "1001"}, {"Signature": None}):
        values = {**good.raw, **change}
        p = Params([(k, v) for k, v in values.items() if v is not None])
        with pytest.raises(CmqError) as exc:
            auth(p, guard, 1000)
        assert exc.value.code == 4100


def test_replay_guard_forgets_old_timestamps_and_stays_bounded() -> None:
    guard = ReplayGuard(10, 3)
    assert guard.first_use("a", 100, 1, 100)
    assert not guard.first_use("a", 100, 1, 100)
    assert guard.first_use("a", 100, 1 + 1, 100)
    assert guard.first_use("a", 111, 1, 111)  # 100 is out of the window now
    assert guard.size == 1
    assert guard.first_use("a", 111, 2, 111)
    assert guard.first_use("a", 112, 1, 112)
    assert guard.first_use("a", 113, 1, 113)  # over capacity: the oldest second goes
    assert guard.size <= 3 and guard.evicted == 2
