"""A durable message broker: AMQP 0-9-1 (and later MQTT and a CMQ-style HTTP API) on one core."""

__version__ = "0.1.0"
