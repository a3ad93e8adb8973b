"""From DHCP packets to audit observations: one observation per exchange where it can be.

A DORA is two packets (DISCOVER and REQUEST) that users think of as one event: "offered X; acked X".
An OFFER therefore waits up to ``hold_seconds`` for the REQUEST of the same exchange (same MAC and
xid); an OFFER nobody took is recorded alone, with its own time, after it. Pure and synchronous (no
I/O), so the same code pairs packets inside the daemon or in the audit writer process
(``bramble.auditd``), which takes this work off the packet path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from bramble.boot.dhcp import DhcpEvent

#: How long an OFFER waits for the REQUEST of its exchange.
OFFER_HOLD_SECONDS = 3.0
#: A DISCOVER flood without REQUESTs records the oldest held offers early.
MAX_HELD_OFFERS = 10_000

_FAILED_DHCP = frozenset(("nacked", "exhausted", "unsent"))
_DHCP_FIELDS = DhcpEvent._fields
_OFFER_ONLY_DETAILS = ("arch", "vendor_class", "user_class", "hostname", "boot_file")


@dataclass(slots=True)
class BootObservation:
    """One interaction, ready to become an audit event."""

    action: str  # boot.dhcp | boot.tftp | boot.http | boot.syslog | boot.wake | machine.discovered
    target: str  # machine/NAME, or mac/MAC or ip/IP when nobody knows the sender
    message: str
    outcome: str = "ok"
    details: dict[str, Any] = field(default_factory=dict)
    time: datetime | None = None  # when it happened, if not when it is observed (a held DHCP offer)
    # Makes (message, details) when the audit writer gets to it: a packet path only queues its facts,
    # and the formatting waits with the write (see bramble.core.observations on storms).
    render: Callable[[], tuple[str, dict[str, Any]]] | None = None

    def realize(self) -> BootObservation:
        """Fill ``message`` and ``details`` from ``render`` (once); returns self."""
        if self.render is not None:
            self.message, self.details = self.render()
            self.render = None
        return self


def dhcp_record(event: DhcpEvent, interface: str) -> tuple[str, dict[str, Any]]:
    """The audit message and details of one DHCP packet."""
    # Every field that is set.
    details = {k: v for k, v in zip(_DHCP_FIELDS, event, strict=True) if v is not None and v != "" and v != ()}
    details["client"] = f"{event.client[0]}:{event.client[1]}"
    details["interface"] = interface
    return _dhcp_text(event), details


def _dhcp_text(event: DhcpEvent) -> str:
    text = f"{event.message_type} from {event.mac}: {event.outcome}"
    if event.yiaddr:
        text += f" {event.yiaddr}"
    if event.boot_file:
        text += f" boot file {event.boot_file}"
    return text + (f" ({event.reason})" if event.reason else "")


def exchange_record(
    offer: DhcpEvent, offered_at: float, request: DhcpEvent, interface: str
) -> tuple[str, dict[str, Any]]:
    """One event for a whole exchange: the REQUEST's answer, with what the DISCOVER was offered and when.

    The details are the REQUEST's, plus ``offered`` and ``offered_at``, and what only the DISCOVER
    said about the client (a client should repeat its options in the REQUEST; not all do).
    """
    request_text, details = dhcp_record(request, interface)
    details["offered"] = offer.yiaddr
    details["offered_at"] = datetime.fromtimestamp(offered_at, UTC).isoformat()
    for key in _OFFER_ONLY_DETAILS:
        value = getattr(offer, key)
        if value and key not in details:
            details[key] = value
    return _dhcp_text(offer) + "; " + request_text.replace(f" from {request.mac}", "", 1), details


@dataclass(slots=True)
class HeldOffer:
    """A DISCOVER's OFFER waiting for its REQUEST."""

    held_at: float  # the pairing clock (monotonic)
    time: float  # wall clock (time.time()) of the packet: a datetime only if it is recorded alone
    observation: BootObservation
    event: DhcpEvent


class DhcpExchanges:
    """Pairs each OFFER with its REQUEST and hands ``record`` one observation per exchange.

    The observations carry a ``render``: formatting waits until the audit writer writes the row.
    """

    def __init__(
        self,
        record: Callable[[BootObservation], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        hold_seconds: float = OFFER_HOLD_SECONDS,
        max_held: int = MAX_HELD_OFFERS,
    ) -> None:
        self._record = record
        self._clock = clock
        self.hold_seconds = hold_seconds
        self._max_held = max_held
        self.held: dict[tuple[str, int], HeldOffer] = {}  # (mac, xid) -> the exchange's OFFER, in arrival order

    def packet(self, interface: str, target: str, event: DhcpEvent, at: float) -> None:
        """One DHCP packet the server answered (or refused), seen at wall-clock time ``at``."""
        seen = BootObservation(
            "boot.dhcp",
            target,
            "",
            "failed" if event.outcome in _FAILED_DHCP else "ok",
            time=datetime.fromtimestamp(at, UTC),
            render=partial(dhcp_record, event, interface),
        )
        key = (event.mac, event.xid)
        held_offers = self.held
        if event.message_type == "DISCOVER" and event.outcome == "offered":
            earlier = held_offers.pop(key, None)  # a retransmitted DISCOVER: the first OFFER stands alone
            if earlier is not None:
                self._record(earlier.observation)
            if len(held_offers) >= self._max_held:
                self._record(held_offers.pop(next(iter(held_offers))).observation)
            held_offers[key] = HeldOffer(self._clock(), at, seen, event)
            return
        if held_offers and event.message_type == "REQUEST":
            held = held_offers.pop(key, None)
            if held is not None:
                seen.render = partial(exchange_record, held.event, held.time, event, interface)
        self._record(seen)

    def release(self, older_than: float | None) -> None:
        """Record the OFFERs whose REQUEST did not come within ``older_than`` seconds (None: all of
        them, at shutdown)."""
        cutoff = None if older_than is None else self._clock() - older_than
        held_offers = self.held
        while held_offers:
            key = next(iter(held_offers))  # held in arrival order
            if cutoff is not None and held_offers[key].held_at > cutoff:
                break
            self._record(held_offers.pop(key).observation)

    def release_expired(self) -> None:
        """What a periodic task calls: the OFFERs that waited their whole hold time."""
        self.release(self.hold_seconds)
