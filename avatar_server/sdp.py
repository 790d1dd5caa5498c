"""Checking SDP offers before aiortc sees them: cheap size caps first, then the fields a session needs.

aiortc's setRemoteDescription is superlinear in the number of candidates (3,000 took 1.8 s on the
event loop) and fails with internal exceptions (AttributeError, StopIteration, AssertionError in a
background task) on offers that lack a mid, a fingerprint or a setup role. Every check here raises
Problem 400 with a message meant for the client.
"""

from __future__ import annotations

import logging
import re

from aiortc.sdp import MediaDescription, SessionDescription

from avatar_server.problems import Problem
from avatar_server.settings import LimitSettings
from avatar_server.text import check_text
from model.errors import InputError

logger = logging.getLogger(__name__)

CANDIDATE_PREFIX = "a=candidate:"
MEDIA_PREFIX = "m="
RTP_KINDS = ("audio", "video")
FINGERPRINT_ALGORITHMS = {"sha-256": 32, "sha-384": 48, "sha-512": 64}  # what aiortc's DTLS can verify (bytes)
FINGERPRINT_VALUE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})*$")


def _bad(detail: str) -> Problem:
    return Problem(400, f"unusable SDP offer: {detail}", code="bad_sdp")


def _count_lines(sdp: str, prefix: str) -> int:
    """Lines starting with `prefix` (C-speed string counting, no split)."""
    return sdp.startswith(prefix) + sdp.count("\n" + prefix)


def check_size(sdp: str, limits: LimitSettings) -> None:
    """Encodable text; line, media-section and candidate caps, counted without parsing."""
    try:
        check_text(sdp, "the offer")
    except InputError as error:
        raise _bad(str(error)) from None
    media = _count_lines(sdp, MEDIA_PREFIX)
    if media > limits.max_sdp_media:
        raise _bad(f"{media} media sections; the limit is {limits.max_sdp_media}")
    candidates = _count_lines(sdp, CANDIDATE_PREFIX)
    if candidates > limits.max_sdp_candidates:
        raise _bad(f"{candidates} ICE candidates; the limit is {limits.max_sdp_candidates}")
    lines = sdp.count("\n") + 1
    if lines > limits.max_sdp_lines:
        raise _bad(f"{lines} lines; the limit is {limits.max_sdp_lines}")


def _fingerprints_ok(fingerprints: list) -> bool:
    """At least one fingerprint aiortc can verify, and each of those well-formed (aiortc checks them all)."""
    usable = [f for f in fingerprints if f.algorithm.lower() in FINGERPRINT_ALGORITHMS]
    return bool(usable) and all(FINGERPRINT_VALUE.match(f.value)
                                and len(f.value.split(":")) == FINGERPRINT_ALGORITHMS[f.algorithm.lower()]
                                for f in usable)


def _check_media(index: int, media: MediaDescription, mids: set[str]) -> None:
    """One audio/video section: mid, ICE credentials, DTLS fingerprint and role, rtcp-mux, codecs."""
    where = f"media section {index} ({media.kind})"
    mid = media.rtp.muxId
    if not mid:
        raise _bad(f"{where} has no a=mid")
    if mid in mids:
        raise _bad(f"{where} repeats a=mid:{mid}")
    mids.add(mid)
    if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
        raise _bad(f"{where} has no a=ice-ufrag / a=ice-pwd")
    if media.dtls is None or media.dtls.role is None:
        raise _bad(f"{where} has no a=setup")
    if not _fingerprints_ok(media.dtls.fingerprints):
        raise _bad(f"{where} has no usable a=fingerprint (well-formed sha-256, sha-384 or sha-512)")
    if not media.rtcp_mux:
        raise _bad(f"{where} has no a=rtcp-mux")
    if not media.rtp.codecs:
        raise _bad(f"{where} has no codec (a=rtpmap)")


def parse_offer(sdp: str, limits: LimitSettings) -> SessionDescription:
    """The parsed offer, or Problem 400 naming what is missing; size caps are checked before parsing."""
    check_size(sdp, limits)
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as error:  # noqa: BLE001 - aiortc's parser raises whatever the malformed line triggers
        logger.debug("SDP parse failed: %r", error)
        raise _bad("not valid SDP") from None
    mids: set[str] = set()
    kinds = []
    for index, media in enumerate(parsed.media):
        kinds.append(media.kind)
        if media.kind in RTP_KINDS:
            _check_media(index, media, mids)
    if "video" not in kinds:
        raise _bad("the offer has no video m-line to send the avatar on")
    for group in parsed.group:
        missing = [m for m in group.items if m not in mids and m not in _other_mids(parsed)]
        if missing:
            raise _bad(f"a=group:{group.semantic} names unknown mid {missing[0]}")
    return parsed


def _other_mids(parsed: SessionDescription) -> set[str]:
    """Mids of non-RTP sections (data channels)."""
    return {m.rtp.muxId for m in parsed.media if m.kind not in RTP_KINDS and m.rtp.muxId}
