"""TLS on every client listener (AMQPS, MQTT over TLS and secure WebSocket, HTTPS), with and
without client certificates, EXTERNAL login, a plain-text client on a TLS port, and a
certificate reloaded on SIGHUP. Each test makes its own CA with trustme."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import queue
import signal
import socket
import ssl
import time

import aio_pika
import pika
import pika.credentials
import pika.exceptions
import pytest
import trustme
from cmq.account import Account
from cmq.cmq_exception import CMQClientNetworkException
from cmq.queue import Message, QueueMeta

from compat_tests.cluster import Cluster
from compat_tests.cmq_helpers import SECRET_ID, SECRET_KEY, CmqBroker
from compat_tests.conftest import port_open
from compat_tests.helpers import uid, wait_until
from compat_tests.mqtt_helpers import TIMEOUT, Paho
from compat_tests.test_mqtt_connect import PAHO_BAD_CREDENTIALS, PAHO_NOT_AUTHORIZED

pytestmark = pytest.mark.own_broker

CLIENT_USER = "tls-client"


class Pki:
    """A CA, the broker's certificate and a client certificate, as PEM files in `directory`."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.dir = directory
        self.ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert_file = directory / "broker-cert.pem"
        self.key_file = directory / "broker-key.pem"
        self.server = self.write_server_cert(self.ca)
        self.client = self.ca.issue_cert("client.example", common_name=CLIENT_USER)

    def write_server_cert(self, ca: trustme.CA) -> trustme.LeafCert:
        """A new broker certificate from `ca`, written where the broker reads its files."""
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        self.key_file.write_bytes(cert.private_key_pem.bytes())
        return cert

    def args(self, verify_peer: bool = False) -> list[str]:
        args = ["--tls-cert", str(self.cert_file), "--tls-key", str(self.key_file)]
        if verify_peer:
            args += ["--tls-ca", str(self.ca_file), "--tls-verify-peer"]
        return args

    def context(self, client_cert: bool = False) -> ssl.SSLContext:
        """A client's context: trusts the CA, presents the client certificate if asked."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if client_cert:
            self.client.configure_cert(context)
        return context


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    return Pki(tmp_path)


def amqps(broker, context: ssl.SSLContext, **kw) -> pika.BlockingConnection:
    params = broker.params(**kw)
    params.port = broker.amqps_port
    params.ssl_options = pika.SSLOptions(context, broker.host)
    return pika.BlockingConnection(params)


def round_trip(conn: pika.BlockingConnection) -> None:
    """Declare a queue, publish to it and get the message back over `conn`."""
    ch = conn.channel()
    queue = ch.queue_declare(uid("tls"), exclusive=True).method.queue
    ch.basic_publish("", queue, b"over tls")
    method, _, body = ch.basic_get(queue, auto_ack=True)
    assert method is not None and body == b"over tls"


def mqtt_client(broker, context: ssl.SSLContext, websocket: bool, **kw) -> Paho:
    """A paho client over TLS (TCP or secure WebSocket), its CONNACK not awaited yet."""
    client = Paho(broker, websocket=websocket, **kw)
    client.client.tls_set_context(context)
    return client


def mqtt_connect(client: Paho, websocket: bool) -> int | None:
    """Connect to the TLS port: paho's CONNACK code, None if the broker closed the
    connection first (with TLS 1.3 a refused client certificate shows after the handshake)."""
    port = client.broker.mqtt_wss_port if websocket else client.broker.mqtts_port
    try:
        client.client.connect(client.broker.host, port, keepalive=client.keepalive)
    except OSError:
        return None
    client.client.loop_start()
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            return client.connacks.get(timeout=0.05)[0]
        if not client.disconnects.empty():
            client.stop()
            return None
    raise AssertionError("neither a CONNACK nor a closed connection")


def mqtt_round_trip(client: Paho) -> None:
    topic = uid("tls") + "/t"
    assert client.subscribe((topic, 1)) == [1]
    client.publish(topic, b"over tls", qos=1)
    assert client.message().payload == b"over tls"


def sdk_round_trip(broker) -> None:
    """Tencent's CMQ SDK, unchanged, over HTTPS: create a queue, send and receive."""
    account = Account(f"https://{broker.host}:{broker.https_port}", SECRET_ID, SECRET_KEY)
    queue = account.get_queue(uid("q"))
    queue.create(QueueMeta())
    queue.send_message(Message("over https"))
    assert queue.receive_message(1).msgBody == "over https"


async def aio_pika_round_trip(broker, context: ssl.SSLContext) -> None:
    url = f"amqps://guest:guest@{broker.host}:{broker.amqps_port}/"
    conn = await aio_pika.connect(url, ssl_context=context)
    async with conn:
        ch = await conn.channel()
        queue = await ch.declare_queue(uid("tls"), exclusive=True)
        await ch.default_exchange.publish(aio_pika.Message(b"over tls"), queue.name)
        message = await queue.get(timeout=TIMEOUT)
        assert message.body == b"over tls"
        await message.ack()


def test_every_client_over_tls_without_client_certificates(pki, broker_factory, monkeypatch):
    b = broker_factory(*pki.args())
    CmqBroker.attach(b)
    context = pki.context()
    with amqps(b, context) as conn:
        round_trip(conn)
    asyncio.run(aio_pika_round_trip(b, context))
    for websocket in (False, True):
        client = mqtt_client(b, context, websocket)
        assert mqtt_connect(client, websocket) == 0
        mqtt_round_trip(client)
        client.close()
    # The SDK builds its own default context: it trusts the test CA through SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    sdk_round_trip(b)
    # Without a verified client certificate EXTERNAL is not offered.
    with pytest.raises(pika.exceptions.AuthenticationError):
        amqps(b, context, credentials=pika.credentials.ExternalCredentials())
    # The plain listeners are still there.
    with pika.BlockingConnection(b.params()) as conn:
        round_trip(conn)


def test_client_certificates_required_and_used(pki, broker_factory, monkeypatch):
    b = broker_factory(*pki.args(verify_peer=True))
    CmqBroker.attach(b)
    b.cli("users", "add", CLIENT_USER, "its-password")
    b.cli("permissions", "set", CLIENT_USER, ".*", ".*", ".*")
    with_cert, without_cert = pki.context(client_cert=True), pki.context()

    # No certificate: every TLS listener refuses the handshake.
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqps(b, without_cert)
    for websocket in (False, True):
        assert mqtt_connect(mqtt_client(b, without_cert, websocket), websocket) is None
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    with pytest.raises(CMQClientNetworkException):
        sdk_round_trip(b)

    # With one: password logins as before, and EXTERNAL logs in as the certificate's CN.
    with amqps(b, with_cert) as conn:
        round_trip(conn)
    asyncio.run(aio_pika_round_trip(b, with_cert))
    with amqps(b, with_cert, credentials=pika.credentials.ExternalCredentials()) as conn:
        round_trip(conn)
    # The SDK with a certificate: through the stdlib's hook for its default HTTPS context.
    monkeypatch.setattr(ssl, "_create_default_https_context", lambda: with_cert)
    sdk_round_trip(b)

    # MQTT: no user name, the certificate's CN is the user (anonymous access is off).
    for websocket in (False, True):
        client = mqtt_client(b, with_cert, websocket, username=None)
        assert mqtt_connect(client, websocket) == 0
        mqtt_round_trip(client)
        client.close()
    # A user name and password sent take priority over the certificate.
    wrong = mqtt_client(b, with_cert, False, username=CLIENT_USER, password="wrong")
    assert mqtt_connect(wrong, False) == PAHO_BAD_CREDENTIALS
    wrong.stop()


def test_external_needs_an_existing_user(pki, broker_factory):
    b = broker_factory(*pki.args(verify_peer=True))
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        amqps(b, pki.context(client_cert=True), credentials=pika.credentials.ExternalCredentials())
    client = mqtt_client(b, pki.context(client_cert=True), False, username=None)
    assert mqtt_connect(client, False) == PAHO_NOT_AUTHORIZED
    client.stop()


def handshake_failures(broker) -> list[str]:
    return [line for line in broker.log_tail(20000).splitlines() if "TLS handshake with" in line]


def test_plain_text_client_on_a_tls_port_is_refused_cleanly(pki, broker_factory):
    b = broker_factory(*pki.args())
    with amqps(b, pki.context()) as kept:
        plain = b.params()
        plain.port = b.amqps_port
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(plain)
        lines = wait_until(lambda: handshake_failures(b), message="the handshake failure logged")
        assert len(lines) == 1 and "amqps: TLS handshake with 127.0.0.1:" in lines[0]
        assert mqtt_connect(Paho(b), False) is None  # no CONNACK: the connection is closed
        wait_until(lambda: len(handshake_failures(b)) == 2, message="a second line")
        assert "mqtts: TLS handshake with" in handshake_failures(b)[1]
        # Nothing else affected: the open TLS connection, new TLS and plain connections.
        round_trip(kept)
        with amqps(b, pki.context()) as conn:
            round_trip(conn)
        with pika.BlockingConnection(b.params()) as conn:
            round_trip(conn)
    assert b.running


def server_certificate(broker, context: ssl.SSLContext) -> bytes:
    """The DER certificate a new TLS connection to the AMQPS port is shown."""
    with (
        socket.create_connection((broker.host, broker.amqps_port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=broker.host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


def test_certificate_reloaded_on_sighup_without_dropping_connections(pki, broker_factory):
    b = broker_factory(*pki.args())
    new_ca = trustme.CA()
    context = pki.context()
    new_ca.configure_trust(context)  # the clients trust both CAs
    assert server_certificate(b, context) == der(pki.server)
    kept_amqp = amqps(b, context)
    kept_mqtt = mqtt_client(b, context, False)
    assert mqtt_connect(kept_mqtt, False) == 0

    new_cert = pki.write_server_cert(new_ca)
    b.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: server_certificate(b, context) == der(new_cert),
        message="new connections shown the new certificate",
    )
    # A connection shown only the old CA's chain is refused now; the old connections live on.
    with pytest.raises(ssl.SSLCertVerificationError):
        amqps(b, pki.context())
    round_trip(kept_amqp)
    mqtt_round_trip(kept_mqtt)

    # Half a renewal (a certificate without its key) is not loaded: the certificate in use
    # stays, and the broker says why.
    half = new_ca.issue_cert("127.0.0.1")
    pki.cert_file.write_bytes(b"".join(blob.bytes() for blob in half.cert_chain_pems))
    b.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "TLS certificates not reloaded" in b.log_tail(), message="the error")
    assert server_certificate(b, context) == der(new_cert)
    round_trip(kept_amqp)
    kept_amqp.close()
    kept_mqtt.close()


def test_cluster_links_use_the_same_certificates(pki, tmp_path):
    cl = Cluster(tmp_path / "cluster", extra_args=tuple(pki.args(verify_peer=True)))
    try:
        cl.start()
        leader = cl.leader()
        follower = cl.followers(leader)[0]
        # A member's cluster port speaks TLS and takes a certificate from the CA.
        port = cl.cluster_ports[follower]
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
            pki.context(client_cert=True).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
        with amqps(cl.nodes[follower], pki.context(client_cert=True)) as conn:
            round_trip(conn)
    finally:
        assert not cl.close()


def test_no_tls_listeners_without_a_certificate(broker_factory):
    b = broker_factory()
    for port in (b.amqps_port, b.mqtts_port, b.mqtt_wss_port, b.https_port):
        assert not port_open(b.host, port)
    with pika.BlockingConnection(b.params()) as conn:
        round_trip(conn)
