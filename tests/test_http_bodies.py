"""CMQ message bodies: text when UTF-8, base64 and flagged otherwise, both ways, no loss."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.protocols.http.bodies import body_fields, sent_bodies
from broker.protocols.http.errors import CmqError
from broker.protocols.http.params import Params


@given(st.binary(min_size=1))
def test_any_body_round_trips(body: bytes) -> None:
    fields = body_fields(body)
    params = Params(list(fields.items()))
    assert sent_bodies(params, [fields["msgBody"]]) == [body]


def test_utf8_bodies_stay_text() -> None:
    assert body_fields("世界".encode()) == {"msgBody": "世界"}
    assert body_fields(b"\xff") == {"msgBody": "/w==", "msgBodyEncoding": "base64"}


@pytest.mark.parametrize("encoding,text", [("base64", "a*b="), ("base64", "YQ"), ("hex", "00")])
def test_bad_encodings_are_refused(encoding: str, text: str) -> None:
    with pytest.raises(CmqError) as exc:
        sent_bodies(Params([("msgBodyEncoding", encoding)]), [text])
    assert exc.value.message.startswith("(10350)")
