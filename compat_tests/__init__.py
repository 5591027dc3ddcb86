"""AMQP 0-9-1 compatibility tests (validated against RabbitMQ, run against our broker)."""
