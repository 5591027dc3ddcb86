"""Message bodies between CMQ's JSON text and the core's bytes, losslessly.

CMQ carries bodies as text, AMQP and MQTT as bytes. A body that is valid UTF-8 travels as its
text; any other body is answered base64-encoded with `msgBodyEncoding: "base64"` beside it
(SDKs ignore fields they do not know), never with bytes replaced. A CMQ client sends bytes
the same way: `msgBodyEncoding=base64` with the send or publish, and msgBody is decoded.
"""

from __future__ import annotations

import base64
import binascii

from broker.protocols.http import errors
from broker.protocols.http.params import Params

ENCODING = "msgBodyEncoding"
BASE64 = "base64"


def sent_bodies(params: Params, texts: list[str]) -> list[bytes]:
    """The bytes of the msgBody parameters of a send or publish."""
    encoding = params.optional_text(ENCODING)
    if encoding is None:
        return [text.encode() for text in texts]
    if encoding != BASE64:
        raise errors.out_of_range(ENCODING, BASE64)
    try:
        return [base64.b64decode(text, validate=True) for text in texts]
    except binascii.Error:
        raise errors.out_of_range("msgBody", "not base64, as msgBodyEncoding says") from None


def body_fields(body: bytes) -> dict[str, str]:
    """msgBody (and msgBodyEncoding when needed) of a received or pushed message."""
    try:
        return {"msgBody": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"msgBody": base64.b64encode(body).decode("ascii"), ENCODING: BASE64}
