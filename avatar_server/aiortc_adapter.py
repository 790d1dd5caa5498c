"""The one place omnilive reaches into aiortc's internals; tests/test_aiortc_adapter.py fails loudly when they change.

aiortc 1.16 has no public way to see when each RTP packet arrives (before the receiver's jitter buffer, the way a
browser's lip sync times media), so `tap_rtp` wraps the receiver method its DTLS transport hands every packet to.

Nor can one configure a receiver's jitter buffer. aiortc's audio buffer (`JitterBuffer(capacity=16, prefetch=4)`)
hands a packet to the decoder only once 4 more have arrived (80 ms of a 20 ms-packet microphone), and after a lost
packet it waits for the buffer to fill, then keeps 15 packets (300 ms) waiting for the rest of the stream (one packet
out per packet in). `use_live_audio_buffer` swaps in `LiveAudioJitterBuffer`: a packet is decoded as soon as it is
the next in sequence, a missing one is waited for only while at most `reorder` later packets arrived, and everything
a late packet unblocks is decoded at once. The server's feeder has its own jitter allowance for arrival times
(`media.input_jitter_ms`); this buffer only puts packets back in order.
Nor does a sender say when it has encoded a frame: `tap_encoded` wraps the method that takes a frame from the track
and returns it encoded, so the server can time the encoder (its `encode` stage).
Everything else omnilive does with aiortc goes through its public API.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

RTP_HANDLER = "_handle_rtp_packet"  # RTCRtpReceiver: `async (packet, arrival_time_ms)`, called by RTCDtlsTransport
RTP_HANDLER_PARAMETERS = ("self", "packet", "arrival_time_ms")
# RTCRtpReceiver's private attributes (name-mangled) that `use_live_audio_buffer` reads or replaces
RECEIVER_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"      # JitterBuffer: `add(packet) -> (pli, frame | None)`
RECEIVER_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"      # queue.Queue of (codec, JitterFrame)
RECEIVER_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"    # None until started / once stopped
RECEIVER_TIMESTAMP_MAPPER = "_RTCRtpReceiver__timestamp_mapper"  # TimestampMapper: `.map(rtp timestamp) -> pts`
RECEIVER_CODECS = "_RTCRtpReceiver__codecs"                    # {payload type: RTCRtpCodecParameters}
SENDER_NEXT_ENCODED = "_next_encoded_frame"  # RTCRtpSender: `async (codec) -> RTCEncodedFrame | None`, track -> encoded
SENDER_NEXT_ENCODED_PARAMETERS = ("self", "codec")
AIORTC_AUDIO_BUFFER = (16, 4)  # aiortc's own audio JitterBuffer: capacity, prefetch
MAX_MISORDER = 100  # as aiortc: a packet this far behind the next expected one restarts the sequence


def tap_rtp(receiver: RTCRtpReceiver, on_packet: Callable[[int], None]) -> None:
    """Call `on_packet(rtp_timestamp)` for every RTP packet `receiver` gets, as it arrives, then handle it as usual."""
    handle = getattr(receiver, RTP_HANDLER)

    async def tapped(packet: RtpPacket, arrival_time_ms: int) -> None:
        on_packet(packet.timestamp)
        await handle(packet, arrival_time_ms=arrival_time_ms)

    setattr(receiver, RTP_HANDLER, tapped)


def tap_encoded(sender: RTCRtpSender, on_encoded: Callable[[], None]) -> None:
    """Call `on_encoded()` each time `sender` has taken a frame from its track and encoded it (not for frames it
    drops)."""
    next_encoded = getattr(sender, SENDER_NEXT_ENCODED)

    async def tapped(codec: Any) -> Any:
        encoded = await next_encoded(codec)
        if encoded is not None:
            on_encoded()
        return encoded

    setattr(sender, SENDER_NEXT_ENCODED, tapped)


class LiveAudioJitterBuffer(JitterBuffer):
    """Audio RTP packets (one frame each: Opus, G.711) back in sequence order, as soon as they can be.

    `add` returns the first frame it releases, as aiortc's receiver expects; the others it released with it (when a
    late packet fills a gap) wait in `ready` for `use_live_audio_buffer`'s handler to decode them right after.
    """

    def __init__(self, reorder: int, capacity: int = AIORTC_AUDIO_BUFFER[0]) -> None:
        super().__init__(capacity=capacity, prefetch=0)
        if not 0 <= reorder < capacity:
            raise ValueError(f"reorder must be in [0, {capacity})")
        self.reorder = reorder
        self.ready: deque[JitterFrame] = deque()
        self.held = 0      # packets waiting behind a missing one
        self.skipped = 0   # missing packets given up on
        self.late = 0      # packets that came after their turn (dropped)

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._origin is None:
            self._origin = seq
        ahead = uint16_add(seq, -self._origin)
        behind = uint16_add(self._origin, -seq)
        if behind < ahead:  # before the next expected packet
            if behind < MAX_MISORDER:
                self.late += 1
                return False, self._next_ready()
            self._flush()  # the sender restarted its sequence
            self._origin, ahead = seq, 0
        elif ahead >= self.capacity:  # too far ahead to wait for what is missing
            self._flush()
            self.skipped += uint16_add(seq, -self._origin)
            self._origin, ahead = seq, 0
        pos = seq % self.capacity
        if self._packets[pos] is None:
            self._packets[pos] = packet
            self.held += 1
        self._release()
        return False, self._next_ready()

    def take_ready(self) -> list[JitterFrame]:
        """The frames released besides the one `add` returned, in order."""
        frames = list(self.ready)
        self.ready.clear()
        return frames

    def _next_ready(self) -> JitterFrame | None:
        return self.ready.popleft() if self.ready else None

    def _release(self) -> None:
        """Release the packets in sequence from the next expected one; skip a missing one once more than `reorder`
        packets wait behind it."""
        self._drain(wait=True)

    def _flush(self) -> None:
        """Release every waiting packet in order, skipping what is missing."""
        self._drain(wait=False)

    def _drain(self, wait: bool) -> None:
        assert self._origin is not None
        while self.held:
            pos = self._origin % self.capacity
            packet = self._packets[pos]
            if packet is None:
                if wait and self.held <= self.reorder:
                    return
                self.skipped += 1
            else:
                self._packets[pos] = None
                self.held -= 1
                self.ready.append(JitterFrame(data=packet._data, timestamp=packet.timestamp))  # type: ignore[attr-defined]
            self._origin = uint16_add(self._origin, 1)


def use_live_audio_buffer(receiver: RTCRtpReceiver, reorder: int) -> LiveAudioJitterBuffer:
    """Give an audio `receiver` (before its first packet) a `LiveAudioJitterBuffer`, and decode the frames a late
    packet releases together right after the one aiortc's receiver decodes, in order."""
    buffer = LiveAudioJitterBuffer(reorder)
    setattr(receiver, RECEIVER_JITTER_BUFFER, buffer)
    handle = getattr(receiver, RTP_HANDLER)

    async def handled(packet: RtpPacket, arrival_time_ms: int) -> None:
        await handle(packet, arrival_time_ms=arrival_time_ms)
        frames = buffer.take_ready()
        codec = getattr(receiver, RECEIVER_CODECS).get(packet.payload_type)
        if not frames or codec is None or getattr(receiver, RECEIVER_DECODER_THREAD) is None:
            return
        mapper, decoder = getattr(receiver, RECEIVER_TIMESTAMP_MAPPER), getattr(receiver, RECEIVER_DECODER_QUEUE)
        for frame in frames:
            frame.timestamp = mapper.map(frame.timestamp)
            decoder.put((codec, frame))

    setattr(receiver, RTP_HANDLER, handled)
    return buffer
