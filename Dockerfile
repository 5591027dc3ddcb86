FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY broker ./broker
RUN pip install . \
    && useradd --system --uid 1000 --home-dir /var/lib/broker --create-home broker \
    && mkdir -p /var/lib/broker/data \
    && chown -R broker:broker /var/lib/broker

USER broker
VOLUME ["/var/lib/broker/data"]
# plain, then TLS (when a certificate is given): AMQP, MQTT, MQTT over WebSocket, HTTP; cluster
EXPOSE 5672 1883 15672 15675 15680 5671 8883 15676 15681 15692 25680

HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["broker", "status", "--data-dir", "/var/lib/broker/data"]

CMD ["broker", "serve", "--data-dir", "/var/lib/broker/data", "--host", "0.0.0.0"]
