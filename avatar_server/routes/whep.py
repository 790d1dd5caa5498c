"""WHEP playback: an application/sdp offer in, the SDP answer out; DELETE its `Location` to end it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from avatar_server.avatars import DEFAULT_AVATAR_ID
from avatar_server.problems import Problem
from avatar_server.routes import API_PREFIX
from avatar_server.routes.dependencies import State, authorized
from avatar_server.routes.sessions import session_options
from avatar_server.schemas import SessionRequest

router = APIRouter(prefix=API_PREFIX, tags=["sessions"], dependencies=[Depends(authorized)])


def ice_server_links(servers: list[dict[str, Any]]) -> list[str]:
    """The ICE servers as WHEP `Link` values (TURN credentials included)."""
    return [f'<{url}>; rel="ice-server"' + (f'; username="{s["username"]}"; credential="{s["credential"]}"; '
                                             'credential-type="password"' if "username" in s else "")
            for s in servers for url in s["urls"]]


@router.post("/whep", status_code=201, response_class=Response,
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"application/sdp": {"schema": {"type": "string"}}}}},
             responses={201: {"content": {"application/sdp": {}}, "description": "SDP answer"}})
async def whep(request: Request, state: State, avatar: str = DEFAULT_AVATAR_ID) -> Response:
    """WHEP playback: an application/sdp offer -> 201 SDP answer, `Location` to DELETE, ICE servers as `Link`."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/sdp":
        raise Problem(415, "a WHEP offer is sent as Content-Type: application/sdp", code="unsupported_media")
    try:
        sdp = (await request.body()).decode("utf-8")
    except UnicodeDecodeError as error:
        raise Problem(400, "the SDP offer is not UTF-8 text", code="bad_sdp") from error
    options = session_options(state, SessionRequest(sdp=sdp or " ", avatar=avatar))
    session, answer = await state.manager.create(sdp, options, state.avatars.get(avatar))
    headers = {"Location": f"{API_PREFIX}/sessions/{session.id}"}
    if links := ice_server_links(state.manager.ice_servers()):
        headers["Link"] = ", ".join(links)
    return Response(answer, status_code=201, media_type="application/sdp", headers=headers)
