"""The web console in headless Chromium, against a broker of our own.

One browser for the module. Each test drives the console as a person would (log in, open a
page, fill a form, press a button) and checks the outcome with real clients: pika for
AMQP, paho for MQTT, and the management API itself. Waits are on what the page shows, with
timeouts; the screenshots of the main pages go to test-artifacts/console/.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request

import pika
import pika.exceptions
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from compat_tests.browser import WAIT, chrome, screenshot
from compat_tests.cmq_helpers import CmqBroker, ok
from compat_tests.conftest import BrokerProcess, port_open
from compat_tests.helpers import channel, collect, connection, uid, wait_until
from compat_tests.mqtt_helpers import Paho

pytestmark = [pytest.mark.own_broker, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def console_broker(tmp_path_factory):
    base = tmp_path_factory.mktemp("console-broker")
    b = BrokerProcess(base / "data")
    b.start()
    wait_until(lambda: port_open(b.host, b.management_port), message="the management port")
    b.console_url = f"http://{b.host}:{b.management_port}/"
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def browser(console_broker):
    driver = chrome()
    driver.console_url = console_broker.console_url
    try:
        driver.get(driver.console_url)
        log_in(driver, "guest", "guest")
        yield driver
    finally:
        driver.quit()


# -- helpers ---------------------------------------------------------------------------


def wait(driver, condition, what: str):
    return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(condition, what)


def log_in(driver, user: str, password: str) -> None:
    field = wait(driver, ec.visibility_of_element_located((By.ID, "login-user")), "login form")
    field.clear()
    field.send_keys(user)
    secret = driver.find_element(By.ID, "login-pass")
    secret.clear()
    secret.send_keys(password)
    driver.find_element(By.ID, "login-submit").click()


def open_page(driver, fragment: str):
    """Go to `#/fragment` and wait until its data is shown; returns the page element."""
    driver.get("about:blank")  # a fresh load: no refresh of the previous page is pending
    driver.get(driver.console_url + "#/" + fragment)
    wait(driver, lambda d: d.find_element(By.ID, "page").get_attribute("data-loaded"), fragment)
    return driver.find_element(By.ID, "page")


# The live part of a page is rebuilt at every refresh: what is in it is read (or clicked)
# in one script call, never through an element found earlier, which may be gone by then.


def text_of(driver, element_id: str) -> str | None:
    return driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e && e.innerText;", element_id
    )


def row_texts(driver, table_id: str) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#' + arguments[0] + ' tbody tr')]"
        ".map((r) => r.innerText);",
        table_id,
    )


def click(driver, css: str) -> None:
    driver.execute_script("document.querySelector(arguments[0]).click();", css)


def flash_says(driver, words: str) -> None:
    wait(driver, ec.text_to_be_present_in_element((By.ID, "flash"), words), repr(words))


def api(broker, method: str, path: str, body=None):
    """The management API, as guest: the JSON answer."""
    req = urllib.request.Request(
        f"http://{broker.host}:{broker.management_port}/api{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def queue_path(name: str, vhost: str = "/") -> str:
    return urllib.parse.quote(vhost, safe="") + "/" + urllib.parse.quote(name, safe="")


# -- tests -----------------------------------------------------------------------------


def test_overview_shows_live_numbers(browser, console_broker):
    open_page(browser, "overview")
    before = int(text_of(browser, "ov-messages").replace(",", ""))
    q = uid("ov")
    with channel(console_broker) as ch:
        ch.queue_declare(q, durable=True)
        ch.confirm_delivery()
        for i in range(7):
            ch.basic_publish("", q, b"m%d" % i)
    # no reload: the page's own 5 s poll must bring the new count
    wait(
        browser,
        lambda d: (text_of(d, "ov-messages") or "").replace(",", "") == str(before + 7),
        "the overview to show 7 more messages",
    )
    assert int(text_of(browser, "ov-queues")) >= 1
    assert "connections refused" in text_of(browser, "counters-table")
    assert browser.execute_script("return document.getElementById('chart-queued').width") > 100
    screenshot(browser, "overview")


def test_message_published_from_queue_page_reaches_pika_consumer(browser, console_broker):
    q = uid("pub")
    with channel(console_broker) as ch:
        ch.queue_declare(q, durable=True)
    open_page(browser, "queue/" + queue_path(q))
    assert text_of(browser, "queue-name") == q
    body = "hello from the console " + uid()
    browser.find_element(By.ID, "publish-payload").send_keys(body)
    browser.find_element(By.ID, "publish-button").click()
    flash_says(browser, "Message published.")
    with channel(console_broker) as ch:
        got = collect(ch, q, 1, auto_ack=True)
    assert [b for _, _, b in got] == [body.encode()]
    assert got[0][1].delivery_mode == 2
    screenshot(browser, "queue")


def test_odd_names_in_an_odd_vhost(browser, console_broker):
    """Names with /, #, ? and % (a vhost with a slash too) survive the links, the page's
    route and the API paths: the queue list leads to the queue's page, whose publish lands
    in that queue."""
    token = uid()
    vhost, q = uid("dev/ops"), "odd/name #1?% " + token
    api(console_broker, "PUT", "/vhosts/" + urllib.parse.quote(vhost, safe=""), {})
    with channel(console_broker, virtual_host=vhost) as ch:
        ch.queue_declare(q, durable=True)
    open_page(browser, "queues")
    browser.find_element(By.ID, "filter").send_keys("#1?% " + token)  # regex characters too
    wait(browser, lambda d: len(row_texts(d, "queues-table")) == 1, "the one queue")
    browser.execute_script(
        "[...document.querySelectorAll('#queues-table a')]"
        "  .find((a) => a.textContent === arguments[0]).click();",
        q,
    )
    wait(browser, lambda d: text_of(d, "queue-name") == q, "the queue's page")
    browser.find_element(By.ID, "publish-payload").send_keys("to an odd place")
    browser.find_element(By.ID, "publish-button").click()
    flash_says(browser, "Message published.")
    with channel(console_broker, virtual_host=vhost) as ch:
        got = collect(ch, q, 1, auto_ack=True)
    assert [b for _, _, b in got] == [b"to an odd place"]


def test_purge_from_queue_page_empties_the_queue(browser, console_broker):
    q = uid("purge")
    with channel(console_broker) as ch:
        ch.queue_declare(q, durable=True)
        ch.confirm_delivery()
        for i in range(5):
            ch.basic_publish("", q, b"p%d" % i)
    open_page(browser, "queue/" + queue_path(q))
    assert text_of(browser, "q-ready") == "5"
    browser.find_element(By.ID, "purge-button").click()
    wait(browser, ec.alert_is_present(), "the purge confirmation").accept()
    flash_says(browser, "purged")
    with channel(console_broker) as ch:
        assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert api(console_broker, "GET", "/queues/" + queue_path(q))["messages"] == 0
    wait(browser, lambda d: text_of(d, "q-ready") == "0", "the page to show an empty queue")


def test_get_from_queue_page_requeues(browser, console_broker):
    q = uid("get")
    with channel(console_broker) as ch:
        ch.queue_declare(q, durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", q, b"look at me", pika.BasicProperties(headers={"k": "v"}))
    open_page(browser, "queue/" + queue_path(q))
    browser.find_element(By.ID, "get-button").click()
    table = wait(browser, ec.visibility_of_element_located((By.ID, "get-table")), "messages")
    assert "look at me" in table.text
    assert '{"k":"v"}' in table.text  # its headers
    with channel(console_broker) as ch:
        assert ch.queue_declare(q, passive=True).method.message_count == 1


def test_rewind_from_queue_page(browser, console_broker):
    q = uid("rewind")
    with channel(console_broker) as ch:
        ch.queue_declare(q, durable=True, arguments={"x-rewind-ms": 3_600_000})
        ch.confirm_delivery()
        for i in range(3):
            ch.basic_publish("", q, b"r%d" % i)
        taken = collect(ch, q, 3)
        assert len(taken) == 3
        ch.basic_ack(taken[-1][0].delivery_tag, multiple=True)  # kept for rewind once acked
        assert ch.queue_declare(q, passive=True).method.message_count == 0
    open_page(browser, "queue/" + queue_path(q))
    seconds = browser.find_element(By.CSS_SELECTOR, "#rewind-form input[name=seconds]")
    seconds.clear()
    seconds.send_keys("600")
    browser.find_element(By.ID, "rewind-button").click()
    flash_says(browser, "Rewound 3 message(s).")
    with channel(console_broker) as ch:
        got = collect(ch, q, 3, auto_ack=True)
    assert [b for _, _, b in got] == [b"r0", b"r1", b"r2"]


def test_rewind_of_a_queue_that_keeps_nothing(browser, console_broker):
    q = uid("norewind")
    with channel(console_broker) as ch:
        ch.queue_declare(q, durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", q, b"gone")
        assert len(collect(ch, q, 1, auto_ack=True)) == 1
    open_page(browser, "queue/" + queue_path(q))
    assert "none" in text_of(browser, "queue-details")  # the page says it keeps nothing
    browser.find_element(By.ID, "rewind-button").click()
    flash_says(browser, "Rewound 0 message(s).")
    with channel(console_broker) as ch:
        assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_delete_from_queue_page(browser, console_broker):
    q = uid("del")
    with channel(console_broker) as ch:
        ch.queue_declare(q, durable=True)
    open_page(browser, "queue/" + queue_path(q))
    browser.find_element(By.ID, "delete-button").click()
    wait(browser, ec.alert_is_present(), "the delete confirmation").accept()
    wait(browser, lambda d: d.current_url.endswith("#/queues"), "the queue list")
    names = [x["name"] for x in api(console_broker, "GET", "/queues")]
    assert q not in names


def test_queues_table_sorts_by_depth(browser, console_broker):
    names = [uid("sort") for _ in range(3)]
    with channel(console_broker) as ch:
        ch.confirm_delivery()
        for depth, q in zip((2, 9, 4), names, strict=True):
            ch.queue_declare(q, durable=True)
            for i in range(depth):
                ch.basic_publish("", q, b"%d" % i)
    open_page(browser, "queues")
    total = "#queues-table th[data-col=Total]"
    click(browser, total)
    click(browser, total)  # again: largest first
    wait(
        browser,
        lambda d: d.execute_script(
            "return document.querySelector(arguments[0]).classList.contains('sorted-desc')", total
        ),
        "the list sorted by total, descending",
    )
    ours = [r for r in row_texts(browser, "queues-table") if any(n in r for n in names)]
    assert [next(n for n in names if n in r) for r in ours] == [names[1], names[2], names[0]]
    screenshot(browser, "queues")


def test_queue_filter_survives_refreshes(browser, console_broker):
    token = uid("flt")
    names = [token + "-a", token + "-b", uid("other")]
    with channel(console_broker) as ch:
        for q in names:
            ch.queue_declare(q, durable=True)
    open_page(browser, "queues")
    box = browser.find_element(By.ID, "filter")
    box.send_keys(token.upper())  # any case
    wait(
        browser,
        lambda d: sorted(r.split("\t")[1] for r in row_texts(d, "queues-table")) == names[:2],
        "only the two matching queues",
    )
    loaded = browser.find_element(By.ID, "page").get_attribute("data-loaded")
    wait(  # the next refresh keeps the filter
        browser,
        lambda d: d.find_element(By.ID, "page").get_attribute("data-loaded") != loaded,
        "a refresh",
    )
    assert sorted(r.split("\t")[1] for r in row_texts(browser, "queues-table")) == names[:2]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)  # typed away, as a person does: an input event
    wait(browser, lambda d: any(names[2] in r for r in row_texts(d, "queues-table")), "all")


def test_long_lists_come_a_page_at_a_time(browser, console_broker):
    token = uid("many")
    names = sorted("%s-%02d" % (token, i) for i in range(30))
    with channel(console_broker) as ch:
        for q in names:
            ch.queue_declare(q, durable=True)
    open_page(browser, "queues")
    browser.find_element(By.ID, "filter").send_keys(token)
    Select(browser.find_element(By.ID, "page-size")).select_by_value("25")
    click(browser, "#queues-table th[data-col=Name]")  # the API sorts them, by name
    wait(browser, lambda d: "Page 1 of 2 · 30 matching" in text_of(d, "pager"), "page 1 of 2")
    first = [r.split("\t")[1] for r in row_texts(browser, "queues-table")]
    click(browser, "#page-next")
    wait(browser, lambda d: "Page 2 of 2" in text_of(d, "pager"), "page 2")
    second = [r.split("\t")[1] for r in row_texts(browser, "queues-table")]
    assert first + second == names
    browser.find_element(By.ID, "filter").clear()
    Select(browser.find_element(By.ID, "page-size")).select_by_value("100")  # back to page 1
    wait(browser, lambda d: "Page 1 of" in text_of(d, "pager"), "the unfiltered list")


def test_connections_across_protocols(browser, console_broker):
    mqtt = Paho(console_broker, client_id=uid("console-device"))
    mqtt.connect()
    props = {"connection_name": "console-test-app", "product": "console-test"}
    try:
        with connection(console_broker, client_properties=props):
            page = open_page(browser, "connections")
            wait(
                browser,
                lambda d: "console-test-app" in page.text and mqtt.client_id in page.text,
                "both connections on the page",
            )
            rows = row_texts(browser, "connections-table")
            amqp = next(r for r in rows if "console-test-app" in r)
            device = next(r for r in rows if mqtt.client_id in r)
            assert "AMQP" in amqp and "guest" in amqp
            assert "MQTT" in device and "guest" in device
            screenshot(browser, "connections")
    finally:
        mqtt.close()


def test_exchanges_page_shows_bindings(browser, console_broker):
    x, q = uid("x"), uid("bound")
    with channel(console_broker) as ch:
        ch.exchange_declare(x, "topic", durable=True)
        ch.queue_declare(q, durable=True)
        ch.queue_bind(q, x, "sensors.#")
    page = open_page(browser, "exchanges")
    assert x in text_of(browser, "exchanges-table")
    bindings = text_of(browser, "bindings-table")
    assert any(x in line and q in line and "sensors.#" in line for line in bindings.splitlines())
    assert "Could not load" not in page.text
    screenshot(browser, "exchanges")


def test_exchange_page_publishes_by_routing_key(browser, console_broker):
    x, q = uid("xpub"), uid("xq")
    with channel(console_broker) as ch:
        ch.exchange_declare(x, "topic", durable=True)
        ch.queue_declare(q, durable=True)
        ch.queue_bind(q, x, "sensors.#")
    page = open_page(browser, "exchange/" + queue_path(x))
    assert text_of(browser, "exchange-name") == x
    assert "sensors.#" in text_of(browser, "bindings-from")
    key = browser.find_element(By.ID, "exchange-publish-routing-key")
    key.send_keys("lights.hall")
    browser.find_element(By.ID, "exchange-publish-payload").send_keys("nobody")
    browser.find_element(By.ID, "exchange-publish-button").click()
    flash_says(browser, "not routed")
    key.clear()
    key.send_keys("sensors.kitchen")
    browser.find_element(By.ID, "exchange-publish-button").click()
    flash_says(browser, "Message published.")
    with channel(console_broker) as ch:
        got = collect(ch, q, 1, auto_ack=True)
        assert ch.queue_declare(q, passive=True).method.message_count == 0  # one, not two
    assert [(m.routing_key, b) for m, _, b in got] == [("sensors.kitchen", b"nobody")]
    assert "Could not load" not in page.text
    screenshot(browser, "exchange")


def test_close_a_connection_from_the_console(browser, console_broker):
    app = uid("closing-app")
    with connection(console_broker, client_properties={"connection_name": app}) as conn:
        page = open_page(browser, "connections")
        wait(browser, lambda d: app in page.text, "the connection on the page")
        browser.execute_script(
            "const row = [...document.querySelectorAll('#connections-table tbody tr')]"
            "  .find((r) => r.innerText.includes(arguments[0]));"
            "row.querySelector('button.close-connection').click();",
            app,
        )
        wait(browser, ec.alert_is_present(), "the close confirmation").accept()
        flash_says(browser, "closed")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            wait_until(
                lambda: conn.process_data_events(time_limit=0.1) and False,
                message="the broker to close the connection",
            )
        assert closed.value.reply_code == 320
    wait(browser, lambda d: app not in page.text, "the connection gone from the page")


def test_topics_page_shows_cmq_topics_and_subscriptions(browser, console_broker):
    client = CmqBroker.attach(console_broker).client()
    topic, q, sub = uid("topic"), uid("cmqq"), uid("sub")
    try:
        ok(client.call("CreateTopic", topicName=topic, filterType=2))
        ok(client.call("CreateQueue", queueName=q))
        ok(
            client.call(
                "Subscribe",
                topicName=topic,
                subscriptionName=sub,
                protocol="queue",
                endpoint=q,
                **{"bindingKey.1": "orders.#"},
            )
        )
    finally:
        client.close()
    open_page(browser, "topics")
    (row,) = [r for r in row_texts(browser, "topics-table") if topic in r]
    assert "routing key" in row
    (row,) = [r for r in row_texts(browser, "subscriptions-table") if sub in r]
    assert topic in row and q in row and "orders.#" in row and "queue" in row
    screenshot(browser, "topics")
    browser.execute_script(  # the topic is a topic exchange: the link leads to its page
        "[...document.querySelectorAll('#topics-table a')]"
        "  .find((a) => a.textContent === arguments[0]).click();",
        topic,
    )
    wait(browser, lambda d: text_of(d, "exchange-name") == topic, "the topic's exchange")
    assert "orders.#" in text_of(browser, "bindings-from")


def test_policies_page_and_a_queue_it_applies_to(browser, console_broker):
    name, q = uid("pol"), uid("capped")
    api(
        console_broker,
        "PUT",
        f"/policies/%2F/{name}",
        {"pattern": "^" + q + "$", "definition": {"max-length": 3}, "apply-to": "queues"},
    )
    with channel(console_broker) as ch:
        ch.queue_declare(q, durable=True)
    open_page(browser, "policies")
    (row,) = [r for r in row_texts(browser, "policies-table") if name in r]
    assert q in row and "max-length: 3" in row and "queues" in row
    screenshot(browser, "policies")
    open_page(browser, "queue/" + queue_path(q))
    assert name in text_of(browser, "queue-details")
    api(console_broker, "DELETE", f"/policies/%2F/{name}")


def test_trace_page_follows_a_message(browser, console_broker):
    q, mid = uid("traced"), uid("mid")
    with channel(console_broker) as ch:
        ch.queue_declare(q, durable=True)
    open_page(browser, "trace")
    browser.find_element(By.ID, "trace-switch-queue").send_keys(q)
    browser.find_element(By.ID, "trace-on").click()
    flash_says(browser, "Trace turned on.")
    wait(browser, lambda d: q in text_of(d, "trace-settings"), "the queue among the traced")
    with channel(console_broker) as ch:
        ch.confirm_delivery()
        ch.basic_publish("", q, b"follow me", pika.BasicProperties(message_id=mid))
        (taken,) = collect(ch, q, 1)
        ch.basic_ack(taken[0].delivery_tag)
    browser.find_element(By.ID, "trace-message-id").send_keys(mid)
    browser.find_element(By.ID, "trace-message-button").click()
    wait(browser, lambda d: "acked" in (text_of(d, "trace-steps") or ""), "the message's steps")
    events = [r.split("\t")[1] for r in row_texts(browser, "trace-steps")]
    assert events == ["published", "delivered", "acked"]
    assert "guest" in text_of(browser, "trace-steps")  # who published it
    browser.find_element(By.ID, "trace-queue-name").send_keys(q)
    browser.find_element(By.ID, "trace-queue-button").click()
    wait(browser, lambda d: "Queue " + q in text_of(d, "trace-results"), "the queue's steps")
    assert "acked" in text_of(browser, "trace-steps")
    screenshot(browser, "trace")
    browser.find_element(By.ID, "trace-off").click()
    flash_says(browser, "Trace turned off.")
    assert api(console_broker, "GET", "/trace") == []


@pytest.mark.parametrize("name", ["users", "vhosts", "keys"])
def test_other_pages_load(browser, console_broker, name):
    page = open_page(browser, name)
    assert "Could not load" not in page.text, page.text
    if name == "users":
        assert "guest" in text_of(browser, "users-table")
    if name == "vhosts":
        assert "/" in text_of(browser, "vhosts-table")
    screenshot(browser, name)


def test_wrong_password_is_refused_and_nothing_else_shows(console_broker):
    driver = chrome()
    try:
        driver.get(console_broker.console_url)
        log_in(driver, "guest", "not-the-password")
        wait(
            driver,
            ec.text_to_be_present_in_element((By.ID, "login-error"), "Login failed"),
            "the login error",
        )
        assert not driver.find_element(By.ID, "nav").is_displayed()
        assert driver.execute_script("return sessionStorage.length") == 0
    finally:
        driver.quit()


def test_static_files_and_unknown_paths(console_broker):
    base = console_broker.console_url
    with urllib.request.urlopen(base, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/html")
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        assert b"console/app.js" in resp.read()
    with urllib.request.urlopen(base + "console/app.js", timeout=10) as resp:
        assert "javascript" in resp.headers["Content-Type"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("console/../../pyproject.toml", "console/%2E%2E%2Fconsole.py", "console/x.js"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + path, timeout=10)
        assert err.value.code == 404, path


def test_a_management_user_sees_what_its_tags_allow(console_broker):
    """A `management` user may not list keys (administrators only): the page says so and
    the session goes on; a user without a management tag is refused at the login form."""
    name, plain = uid("watcher"), uid("plain")
    api(console_broker, "PUT", f"/users/{name}", {"password": "pw", "tags": "management"})
    api(console_broker, "PUT", f"/users/{plain}", {"password": "pw", "tags": ""})
    api(
        console_broker,
        "PUT",
        f"/permissions/%2F/{name}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    driver = chrome()
    driver.console_url = console_broker.console_url
    try:
        driver.get(driver.console_url)
        log_in(driver, plain, "pw")
        wait(
            driver,
            ec.text_to_be_present_in_element((By.ID, "login-error"), "Not management user"),
            "the refusal of a user without a management tag",
        )
        log_in(driver, name, "pw")
        wait(driver, ec.visibility_of_element_located((By.ID, "nav")), "the console")
        page = open_page(driver, "keys")
        assert "Not administrator user" in page.text
        assert driver.find_element(By.ID, "nav").is_displayed()
        page = open_page(driver, "queues")
        assert text_of(driver, "queues-table")
    finally:
        driver.quit()
