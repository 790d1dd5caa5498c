"""The aiortc internals omnilive relies on (avatar_server/aiortc_adapter.py) still exist on the installed aiortc.

Each failure names what changed, so an aiortc upgrade breaks here, loudly, instead of in a loopback test that
quietly falls back to frame arrival times.
"""

from __future__ import annotations

import asyncio
import inspect

import aioice.ice
import aiortc
import numpy as np
import pytest
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcdtlstransport import RtpReceiver
from aiortc.rtp import RtpPacket

from avatar_server.aiortc_adapter import (
    AIORTC_AUDIO_BUFFER,
    RECEIVER_CODECS,
    RECEIVER_DECODER_QUEUE,
    RECEIVER_DECODER_THREAD,
    RECEIVER_JITTER_BUFFER,
    RECEIVER_TIMESTAMP_MAPPER,
    RTP_HANDLER,
    RTP_HANDLER_PARAMETERS,
    SENDER_NEXT_ENCODED,
    SENDER_NEXT_ENCODED_PARAMETERS,
    LiveAudioJitterBuffer,
    tap_encoded,
    tap_rtp,
    use_live_audio_buffer,
)
from avatar_server.testing import microphone_pair

CONNECT_TIMEOUT_S = 10.0
PACKETS = 5  # RTP packets the tap must see
OPUS_PACKET = 960  # RTP timestamp units per 20 ms Opus packet (48 kHz clock)


def changed(what: str, found: object) -> str:
    return (f"aiortc {aiortc.__version__} changed {what} (found {found}): update avatar_server/aiortc_adapter.py "
            "and this test")


def parameters(function: object) -> tuple[str, ...]:
    return tuple(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_the_receiver_still_takes_each_rtp_packet_through_the_tapped_method() -> None:
    handler = getattr(RTCRtpReceiver, RTP_HANDLER, None)
    assert handler is not None, changed(f"RTCRtpReceiver.{RTP_HANDLER}", "no such method")
    assert inspect.iscoroutinefunction(handler), changed(f"RTCRtpReceiver.{RTP_HANDLER}", "not a coroutine")
    assert parameters(handler) == RTP_HANDLER_PARAMETERS, changed(f"RTCRtpReceiver.{RTP_HANDLER}'s parameters",
                                                                 parameters(handler))
    caller = getattr(RtpReceiver, RTP_HANDLER, None)  # what RTCDtlsTransport calls on the receiver it routes to
    assert caller is not None and parameters(caller) == RTP_HANDLER_PARAMETERS, \
        changed(f"the RtpReceiver protocol RTCDtlsTransport routes RTP packets to ({RTP_HANDLER})",
                caller and parameters(caller))
    assert "timestamp" in parameters(RtpPacket), changed("RtpPacket's fields", parameters(RtpPacket))


def test_the_sender_still_takes_and_encodes_each_frame_through_the_tapped_method() -> None:
    method = getattr(RTCRtpSender, SENDER_NEXT_ENCODED, None)
    assert method is not None, changed(f"RTCRtpSender.{SENDER_NEXT_ENCODED}", "no such method")
    assert inspect.iscoroutinefunction(method), changed(f"RTCRtpSender.{SENDER_NEXT_ENCODED}", "not a coroutine")
    assert parameters(method) == SENDER_NEXT_ENCODED_PARAMETERS, \
        changed(f"RTCRtpSender.{SENDER_NEXT_ENCODED}'s parameters", parameters(method))


async def test_the_encoded_tap_counts_encoded_frames_and_not_dropped_ones() -> None:
    class Sender:  # stands in for RTCRtpSender: the tap only wraps the method
        def __init__(self) -> None:
            self.results = ["frame", None, "frame"]

        async def _next_encoded_frame(self, codec: object) -> object:
            return self.results.pop(0)

    sender, encoded = Sender(), []
    tap_encoded(sender, lambda: encoded.append(1))  # type: ignore[arg-type]
    assert [await sender._next_encoded_frame("vp8") for _ in range(3)] == ["frame", None, "frame"]
    assert len(encoded) == 2


def test_loopback_ice_still_patches_the_host_addresses() -> None:
    """tests/conftest.py's `loopback_ice` replaces aioice's host address lookup."""
    found = parameters(getattr(aioice.ice, "get_host_addresses", None) or (lambda: None))
    assert found == ("use_ipv4", "use_ipv6"), changed("aioice.ice.get_host_addresses", found)


@pytest.mark.usefixtures("loopback_ice")
async def test_the_tap_sees_every_rtp_packet_as_it_arrives() -> None:
    """Two aiortc peers on loopback: the tapped receiver reports each packet's RTP timestamp and still plays it."""
    tapped: list[int] = []
    sender, receiver, track = await microphone_pair(lambda rtp_receiver: tap_rtp(rtp_receiver, tapped.append),
                                                    CONNECT_TIMEOUT_S)
    try:
        for _ in range(PACKETS):
            await asyncio.wait_for(track.recv(), CONNECT_TIMEOUT_S)  # packets still reach the track
    finally:
        await sender.close()
        await receiver.close()
    assert len(tapped) >= PACKETS and np.all(np.diff(tapped[:PACKETS]) > 0), tapped


def test_the_receiver_still_keeps_what_the_live_audio_buffer_replaces_and_feeds() -> None:
    """`use_live_audio_buffer` swaps the audio receiver's jitter buffer and feeds its decoder queue itself."""
    from aiortc.rtcrtpreceiver import TimestampMapper

    class Transport:
        state = "new"

    found = RTCRtpReceiver("audio", Transport())  # type: ignore[arg-type]
    buffer = getattr(found, RECEIVER_JITTER_BUFFER, None)
    assert isinstance(buffer, JitterBuffer), changed("the receiver's jitter buffer", buffer)
    assert (buffer.capacity, buffer._prefetch) == AIORTC_AUDIO_BUFFER, \
        changed("the audio jitter buffer's capacity and prefetch", (buffer.capacity, buffer._prefetch))
    assert parameters(JitterBuffer.add) == ("self", "packet"), changed("JitterBuffer.add", parameters(JitterBuffer.add))
    assert hasattr(getattr(found, RECEIVER_DECODER_QUEUE, None), "put"), changed("the decoder queue", "no put")
    assert isinstance(getattr(found, RECEIVER_TIMESTAMP_MAPPER, None), TimestampMapper), \
        changed("the timestamp mapper", getattr(found, RECEIVER_TIMESTAMP_MAPPER, None))
    assert getattr(found, RECEIVER_CODECS, None) == {}, changed("the codecs by payload type", "no dict")
    assert hasattr(found, RECEIVER_DECODER_THREAD), changed("the decoder thread", "no attribute")


def packet(seq: int) -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=(seq * OPUS_PACKET) % (1 << 32))
    p._data = seq.to_bytes(4, "big")  # type: ignore[attr-defined]
    return p


def play(buffer: LiveAudioJitterBuffer, order: list[int]) -> list[list[int]]:
    """Add the packets in `order`; per add, the sequence numbers it released (the returned frame, then `ready`)."""
    out = []
    for seq in order:
        _, frame = buffer.add(packet(seq))
        frames = ([frame] if frame is not None else []) + buffer.take_ready()
        out.append([int.from_bytes(f.data, "big") for f in frames])
    return out


def test_live_audio_buffer_releases_each_packet_in_sequence_as_it_arrives() -> None:
    assert play(LiveAudioJitterBuffer(reorder=2), list(range(10))) == [[n] for n in range(10)]
    aiortc_buffer = JitterBuffer(*AIORTC_AUDIO_BUFFER)                # aiortc's: the first comes out 4 packets later
    out = [aiortc_buffer.add(packet(n))[1] for n in range(6)]
    assert [f is not None for f in out] == [False, False, False, False, True, True]


@pytest.mark.parametrize("start", [100, 65530])                     # and across the 16-bit wrap
def test_live_audio_buffer_puts_reordered_packets_back_in_order_and_waits_no_longer(start: int) -> None:
    buffer = LiveAudioJitterBuffer(reorder=2)
    order = [start, start + 2, start + 1, start + 3, start + 6, start + 4, start + 5, start + 7]
    assert play(buffer, order) == [[start], [], [start + 1, start + 2], [start + 3], [], [start + 4],
                                   [start + 5, start + 6], [start + 7]]
    assert buffer.held == buffer.skipped == buffer.late == 0


def test_live_audio_buffer_gives_up_a_lost_packet_after_reorder_more_and_keeps_no_backlog() -> None:
    buffer = LiveAudioJitterBuffer(reorder=2)
    out = play(buffer, [0, 1, 3, 4, 5, 6, 2, 7])                      # 2 is lost: it comes after its turn
    assert out == [[0], [1], [], [], [3, 4, 5], [6], [], [7]]
    assert (buffer.held, buffer.skipped, buffer.late) == (0, 1, 1)
    none_waits = LiveAudioJitterBuffer(reorder=0)
    assert play(none_waits, [0, 2, 1, 3]) == [[0], [2], [], [3]]
    far = LiveAudioJitterBuffer(reorder=2)                            # a jump beyond its capacity: all out in order
    assert play(far, [0, 2, 3, 40, 41]) == [[0], [], [], [2, 3, 40], [41]]


@pytest.mark.usefixtures("loopback_ice")
async def test_live_audio_buffer_on_a_real_receiver_decodes_reordered_audio_in_order_without_gaps() -> None:
    """Two aiortc peers on loopback, the receiver's audio packets swapped in pairs before they reach it: every frame
    is decoded, in order, with nothing skipped."""
    buffers: list[LiveAudioJitterBuffer] = []
    swapped = [0]

    def configure(rtp_receiver: RTCRtpReceiver) -> None:
        buffers.append(use_live_audio_buffer(rtp_receiver, reorder=2))
        handle = getattr(rtp_receiver, RTP_HANDLER)
        held: list[tuple[RtpPacket, int]] = []
        seen = [0]

        async def reordering(rtp: RtpPacket, arrival_time_ms: int) -> None:
            seen[0] += 1
            if seen[0] > 1 and seen[0] % 2 == 0:                      # hold this one until the next has arrived
                held.append((rtp, arrival_time_ms))
                return
            await handle(rtp, arrival_time_ms=arrival_time_ms)
            while held:
                late, at = held.pop()
                swapped[0] += 1
                await handle(late, arrival_time_ms=at)

        setattr(rtp_receiver, RTP_HANDLER, reordering)

    sender, receiver, track = await microphone_pair(configure, CONNECT_TIMEOUT_S)
    try:
        frames = [await asyncio.wait_for(track.recv(), CONNECT_TIMEOUT_S) for _ in range(30)]
        assert getattr(receiver.getTransceivers()[0].receiver, RECEIVER_JITTER_BUFFER) is buffers[0]
    finally:
        await sender.close()
        await receiver.close()
    assert swapped[0] >= 10
    assert np.all(np.diff([f.pts for f in frames]) == OPUS_PACKET), [f.pts for f in frames]
    assert buffers[0].skipped == buffers[0].late == 0
