"""The one place omnilive reaches into aiortc's internals; tests/test_aiortc_adapter.py fails loudly when they change.

aiortc 1.16 has no public way to see when each RTP packet arrives (before the receiver's jitter buffer, the way a
browser's lip sync times media), so `tap_rtp` wraps the receiver method its DTLS transport hands every packet to.
Everything else omnilive does with aiortc goes through its public API.
"""

from __future__ import annotations

from typing import Callable

from aiortc import RTCRtpReceiver
from aiortc.rtp import RtpPacket

RTP_HANDLER = "_handle_rtp_packet"  # RTCRtpReceiver: `async (packet, arrival_time_ms)`, called by RTCDtlsTransport
RTP_HANDLER_PARAMETERS = ("self", "packet", "arrival_time_ms")


def tap_rtp(receiver: RTCRtpReceiver, on_packet: Callable[[int], None]) -> None:
    """Call `on_packet(rtp_timestamp)` for every RTP packet `receiver` gets, as it arrives, then handle it as usual."""
    handle = getattr(receiver, RTP_HANDLER)

    async def tapped(packet: RtpPacket, arrival_time_ms: int) -> None:
        on_packet(packet.timestamp)
        await handle(packet, arrival_time_ms=arrival_time_ms)

    setattr(receiver, RTP_HANDLER, tapped)
