"""The scheduler's one error for requests it understands but will not or cannot serve."""

from __future__ import annotations


class Refused(Exception):
    """A request that is understood but not allowed or not possible; the message says why,
    and `code` names the gRPC status the edge answers with."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.code = code
