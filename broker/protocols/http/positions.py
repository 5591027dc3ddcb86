"""Where a rewind by message starts: the sequence number of the message a client names.

Clients know a message by its msgId (what SendMessage and ReceiveMessage return: the id given
at publish, or one made from the queue and sequence number) or by the AMQP message-id they
published it with. The core rewinds by sequence number, so the id is looked up here, in the
committed state, and the command carries the number: replaying the log needs no lookup.
"""

from __future__ import annotations

from broker.core.queue import MessageQueue
from broker.protocols.http.service import message_id


def seq_of(q: MessageQueue, msg_id: str) -> int | None:
    """The sequence number of the message of `q` (kept for rewind, or still in the queue)
    whose id is `msg_id`: found at once for an id made from the sequence number, otherwise
    the earliest message published with that id. None when the queue holds no such message
    (never in it, or deleted longer ago than its rewind window)."""
    derived = _derived_seq(q.qid, msg_id)
    if derived is not None:
        msg = q.messages.get(derived)
        if msg is not None and message_id(q.qid, msg) == msg_id:
            return derived
    return min(
        (seq for seq, m in q.messages.items() if message_id(q.qid, m) == msg_id), default=None
    )


def _derived_seq(qid: int, msg_id: str) -> int | None:
    """The sequence number in an id of the form message_id makes ("{qid}-{seq}")."""
    prefix, _, seq = msg_id.partition("-")
    if prefix != str(qid) or not seq.isdigit():
        return None
    return int(seq)
