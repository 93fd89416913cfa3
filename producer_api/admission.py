"""Admission: an in-flight slot and a share of the byte budget, both taken before a body is read.

A request that would exceed either is refused (429) while its body is still unread, so what this
instance holds at once is bounded by max_in_flight requests and max_buffered_bytes of bodies.
Event-loop only: taking and giving back never await, so no lock is needed.
"""

from __future__ import annotations

from types import TracebackType

from producer_api.errors import OverloadedError, PayloadTooLargeError

RETRY_AFTER_S = 1


class Admission:
    def __init__(self, *, max_in_flight: int, max_buffered_bytes: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_buffered_bytes = max_buffered_bytes
        self.in_flight = 0
        self.buffered_bytes = 0

    def admit(self, body_bytes: int) -> Ticket:
        """A ticket for one request that holds at most body_bytes (its body, or what parsing it holds:
        BodyPlan.reserve); raises 429 (or 413) at once."""
        if body_bytes > self.max_buffered_bytes:
            raise PayloadTooLargeError(
                f"this request would hold {body_bytes} bytes, more than this instance buffers at once"
            )
        if self.in_flight >= self.max_in_flight:
            raise OverloadedError(
                f"{self.max_in_flight} requests are in flight on this instance", retry_after_s=RETRY_AFTER_S
            )
        if self.buffered_bytes + body_bytes > self.max_buffered_bytes:
            raise OverloadedError(
                "this instance holds as many request bytes as it may", retry_after_s=RETRY_AFTER_S
            )
        self.in_flight += 1
        self.buffered_bytes += body_bytes
        return Ticket(self, body_bytes)


class Ticket:
    """One admitted request's slot and bytes; released once, on whatever path the request ends."""

    def __init__(self, admission: Admission, body_bytes: int) -> None:
        self._admission = admission
        self.body_bytes = body_bytes
        self._released = False

    def shrink_to(self, body_bytes: int) -> None:
        """Gives back what a body reserved at its bound but turned out not to need."""
        if not self._released and body_bytes < self.body_bytes:
            self._admission.buffered_bytes -= self.body_bytes - body_bytes
            self.body_bytes = body_bytes

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission.in_flight -= 1
            self._admission.buffered_bytes -= self.body_bytes

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _error: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.release()
