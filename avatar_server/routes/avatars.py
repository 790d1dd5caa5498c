"""Avatar images: upload (validated, reference features computed once), list, delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from avatar_server.avatars import parse_mouth
from avatar_server.problems import Problem
from avatar_server.routes import API_PREFIX
from avatar_server.routes.dependencies import State, authorized
from avatar_server.schemas import AvatarInfo, AvatarList

router = APIRouter(prefix=f"{API_PREFIX}/avatars", tags=["avatars"], dependencies=[Depends(authorized)])


async def read_upload(request: Request, name: str | None, mouth: str | None) -> tuple[bytes, str | None, str | None]:
    """An upload's image bytes, name and mouth: multipart/form-data fields `image` (+ `name`, `mouth`), or the raw
    body (name and mouth from the query)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await request.body(), name, mouth
    form = await request.form(max_files=1, max_fields=4)
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise Problem(422, "multipart upload needs a file field named 'image'", code="missing_image")
    field_name, field_mouth = form.get("name"), form.get("mouth")
    return (await upload.read(), field_name if isinstance(field_name, str) and field_name else name,
            field_mouth if isinstance(field_mouth, str) and field_mouth else mouth)


@router.post("", status_code=201,
             responses={413: {"description": "too many bytes or pixels"}, 415: {"description": "not PNG/JPEG/WebP"},
                        422: {"description": "corrupt, empty or too small"}})
async def upload_avatar(request: Request, response: Response, state: State, name: str | None = None,
                        mouth: str | None = None) -> AvatarInfo:
    """Upload an image: multipart/form-data field `image` (+ `name`, `mouth`), or the raw image bytes as the body.
    `mouth` = "x,y,width" places the closed mouth (lip-line centre, corner-to-corner width; fractions of the
    image) where the model's locator would otherwise look for it: for pictures it misreads, such as photos."""
    data, name, mouth = await read_upload(request, name, mouth)
    avatar = await state.avatars.add(data, name, mouth=None if mouth is None else parse_mouth(mouth))
    response.headers["Location"] = f"{API_PREFIX}/avatars/{avatar.id}"
    return AvatarInfo.model_validate(avatar)


@router.get("")
async def list_avatars(state: State) -> AvatarList:
    return AvatarList(avatars=[AvatarInfo.model_validate(a) for a in state.avatars.list()])


@router.delete("/{avatar_id}", status_code=204)
async def delete_avatar(avatar_id: str, state: State) -> Response:
    state.avatars.delete(avatar_id)
    return Response(status_code=204)
