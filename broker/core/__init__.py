"""The protocol-neutral core: a deterministic state machine driven by commands.

Nothing in this package knows about AMQP, MQTT or HTTP, reads the clock or does I/O.
"""
