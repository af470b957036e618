"""What one remote address may cost a server: handshakes and messages per second,
counted across all of that address's connections (a client that reconnects after
each refusal, or opens hundreds of connections, has one budget).

Each is a token bucket: a burst at once, then a steady rate. A handshake over its
budget is answered 429 with the reason while the address also keeps within a second
budget of refusals; past that, its connections are dropped as they are accepted,
before a byte of theirs is read: what a flood costs stays a few microseconds a try.
"""

from __future__ import annotations

import collections
import time

__all__ = ["Allowance", "AddressBudget", "ClientBudgets", "MESSAGE_BURST", "HANDSHAKE_BURST"]

MESSAGE_BURST = 20  # messages an address may send at once before its rate counts
HANDSHAKE_BURST = 20  # handshakes (HTTP requests included) at once: two page loads
REFUSALS = (10, 2.0)  # refusals answered (429) at once, then a second; past them, drops
ADDRESSES_KEPT = 10_000  # the least recently seen go first (their budget starts full)


class Allowance:
    """A token bucket: ``burst`` at once, then ``per_second``."""

    __slots__ = ("burst", "per_second", "_left", "_counted")

    def __init__(self, burst: float, per_second: float) -> None:
        self.burst, self.per_second = float(burst), per_second
        self._left = self.burst
        self._counted = time.monotonic()

    def take(self) -> bool:
        """False once the taker goes faster than that."""
        now = time.monotonic()
        self._left = min(self.burst, self._left + (now - self._counted) * self.per_second)
        self._counted = now
        if self._left < 1:
            return False
        self._left -= 1
        return True

    def empty(self) -> bool:
        """Whether :meth:`take` would say False now (nothing is taken)."""
        return self._left + (time.monotonic() - self._counted) * self.per_second < 1


class AddressBudget:
    """One :class:`Allowance` per remote address (the least recently seen of more
    than :data:`ADDRESSES_KEPT` are forgotten)."""

    def __init__(self, burst: float, per_second: float) -> None:
        self.burst, self.per_second = burst, per_second
        self._by_address: collections.OrderedDict[str, Allowance] = collections.OrderedDict()

    def take(self, address: str) -> bool:
        allowance = self._by_address.get(address)
        if allowance is None:
            allowance = self._by_address[address] = Allowance(self.burst, self.per_second)
            if len(self._by_address) > ADDRESSES_KEPT:
                self._by_address.popitem(last=False)
        else:
            self._by_address.move_to_end(address)
        return allowance.take()

    def empty(self, address: str) -> bool:
        """Whether ``address`` has nothing left now (nothing is taken)."""
        allowance = self._by_address.get(address)
        return allowance is not None and allowance.empty()

    def describe(self) -> str:
        return f"{self.burst:g} at once, then {self.per_second:g} a second"


class ClientBudgets:
    """A server's budgets per address: handshakes, refusals of handshakes (each
    answered, with its reason), and client messages."""

    def __init__(self, handshakes_per_s: float, handshake_burst: int, messages_per_s: float):
        self.handshakes = AddressBudget(handshake_burst, handshakes_per_s)
        self.refusals = AddressBudget(*REFUSALS)
        self.messages = AddressBudget(MESSAGE_BURST, messages_per_s)
        self.dropped = 0
        """Connections dropped as they were accepted (their address was refused too
        often)."""

    def handshake(self, address: str) -> str | None:
        """None when a handshake from ``address`` keeps within its budget; else the
        reason to refuse it with."""
        if self.handshakes.take(address):
            return None
        return (
            f"too many connections from {address}: at most {self.handshakes.describe()}; "
            "retry later\n"
        )

    def drops(self, address: str) -> bool:
        """Whether a connection from ``address`` is dropped unanswered now: it went
        over its handshake budget and was refused too often meanwhile."""
        return self.handshakes.empty(address) and self.refusals.empty(address)

    def answers_refusal(self, address: str) -> bool:
        """Whether ``address``, over its handshake budget, is still answered (429);
        else its next connections are dropped unanswered until it slows down."""
        return self.refusals.take(address)

    def message(self, address: str) -> str | None:
        """None when a message from ``address`` keeps within its budget; else the
        close reason."""
        if self.messages.take(address):
            return None
        return f"too many messages from this address ({self.messages.describe()})"
