"""An in-memory Flower Grid for tests: SuperNodes that answer in this process, one Context per node.

The engines' server side (firm.engines.flower, firm.rewards.flower) talks to a `flwr.serverapp.Grid`
through `get_node_ids`, `push_messages` and `pull_messages`; this one answers each message at once
with `answer(message, context)`, which a subclass implements with the real ClientApp functions, so a
whole Flower run takes seconds. A message to a node id that is gone gets no reply, as on a SuperLink.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context, Message


class MemoryGrid:
    """`push_messages` stamps each message with an id and keeps its node's answer for `pull_messages`."""

    def __init__(self, contexts: dict[int, Context]) -> None:
        self.contexts = contexts  # node id -> the node's Context
        self.replies: dict[str, Message] = {}
        self.sent = 0

    def answer(self, message: Message, context: Context) -> Message | None:
        """The node's reply to `message` (None: it sends none)."""
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            self.sent += 1
            msg.metadata.__dict__["_message_id"] = f"m{self.sent}"
            ids.append(msg.metadata.message_id)
            context = self.contexts.get(msg.metadata.dst_node_id)
            if context is None:  # the node is gone: the message waits for it until it expires
                continue
            reply = self.answer(msg, context)
            if reply is not None:
                self.replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]
