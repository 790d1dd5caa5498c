"""Shared helpers for server tests: real aiortc offers and candidate floods."""

from __future__ import annotations

from aiortc import RTCPeerConnection


async def offer_sdp() -> str:
    """A real recvonly (video + audio) SDP offer from aiortc; its peer connection is closed again."""
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def with_candidates(sdp: str, per_mid: int) -> str:
    """The offer with `per_mid` extra host candidates after each a=mid line."""
    out = []
    for line in sdp.split("\r\n"):
        out.append(line)
        if line.startswith("a=mid:"):
            out += [f"a=candidate:{i} 1 udp 2130706431 10.0.{i // 250}.{i % 250} {10000 + i} typ host"
                    for i in range(per_mid)]
    return "\r\n".join(out)
