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
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver
from aiortc.rtcdtlstransport import RtpReceiver
from aiortc.rtp import RtpPacket

from avatar_server.aiortc_adapter import RTP_HANDLER, RTP_HANDLER_PARAMETERS, tap_rtp
from avatar_server.peer import MicTrack

CONNECT_TIMEOUT_S = 10.0
PACKETS = 5  # RTP packets the tap must see


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


def test_loopback_ice_still_patches_the_host_addresses() -> None:
    """tests/conftest.py's `loopback_ice` replaces aioice's host address lookup."""
    found = parameters(getattr(aioice.ice, "get_host_addresses", None) or (lambda: None))
    assert found == ("use_ipv4", "use_ipv6"), changed("aioice.ice.get_host_addresses", found)


@pytest.mark.usefixtures("loopback_ice")
async def test_the_tap_sees_every_rtp_packet_as_it_arrives() -> None:
    """Two aiortc peers on loopback: the tapped receiver reports each packet's RTP timestamp and still plays it."""
    sender, receiver = RTCPeerConnection(RTCConfiguration(iceServers=[])), RTCPeerConnection(RTCConfiguration([]))
    tapped: list[int] = []
    got_track: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @receiver.on("track")
    def _track(track: aiortc.MediaStreamTrack) -> None:
        transceiver = next(t for t in receiver.getTransceivers() if t.receiver.track is track)
        tap_rtp(transceiver.receiver, tapped.append)
        got_track.set_result(None)

    try:
        sender.addTrack(MicTrack(np.zeros(16000, np.float32)))
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        await asyncio.wait_for(got_track, CONNECT_TIMEOUT_S)
        track = receiver.getTransceivers()[0].receiver.track
        for _ in range(PACKETS):
            await asyncio.wait_for(track.recv(), CONNECT_TIMEOUT_S)  # packets still reach the track
    finally:
        await sender.close()
        await receiver.close()
    assert len(tapped) >= PACKETS and np.all(np.diff(tapped[:PACKETS]) > 0), tapped
