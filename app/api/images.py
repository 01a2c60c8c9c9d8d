"""Image routes: upload, list, full image, thumbnail, embedded graph, delete."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, File, Query, UploadFile, status
from fastapi.responses import FileResponse, Response
from PIL import Image

from nodes.core.untrusted import UntrustedInputError, open_image
from services.stores.images import ImageNotFoundError, StoredImageError, encode_png

from .errors import ApiError
from .schemas import Deleted, ImageInfo, ImageMetadata, ImageName, ImagePage
from .sessions import get_invoker

router = APIRouter(prefix="/api/v1/images", tags=["images"])

PNG = {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "A PNG image"}


def _open_upload(data: bytes) -> Image.Image:
    try:
        return open_image(data)
    except UntrustedInputError as exc:
        if "pixels" in str(exc):
            raise ApiError(413, "too_large", f"the upload is refused: {exc}", field="file") from None
        raise ApiError(415, "not_an_image", f"the upload is refused: {exc}", field="file") from None


@router.post("/", status_code=status.HTTP_201_CREATED, response_model=ImageInfo,
             summary="Upload an image (multipart field `file`; larger than the server's upload limit: 413)")
@router.post("", status_code=status.HTTP_201_CREATED, response_model=ImageInfo, include_in_schema=False)
def upload_image(file: UploadFile = File(...), invoker: Any = Depends(get_invoker)) -> dict[str, Any]:
    image = _open_upload(file.file.read())
    field = invoker.images.save(image)
    return {"image_name": field.image_name, "width": image.width, "height": image.height}


@router.get("/", response_model=ImagePage, summary="List image names, newest first")
@router.get("", response_model=ImagePage, include_in_schema=False)  # answered here, not with a 307 to "/"
def list_images(offset: int = Query(0, ge=0, le=1_000_000), limit: int = Query(50, ge=1, le=500),
                invoker: Any = Depends(get_invoker)) -> dict[str, Any]:
    names = invoker.images.list(offset, limit + 1)
    return {"items": names[:limit], "offset": offset, "limit": limit, "has_more": len(names) > limit}


def _existing(invoker: Any, image_name: str) -> Any:
    store = invoker.images
    if not store.exists(image_name):
        raise ImageNotFoundError(image_name)
    return store


@router.get("/{image_name}", response_class=FileResponse, responses={200: PNG}, summary="The full image (PNG)")
def get_image(image_name: ImageName, invoker: Any = Depends(get_invoker)) -> FileResponse:
    return FileResponse(_existing(invoker, image_name).path(image_name), media_type="image/png")


@router.get("/{image_name}/thumbnail", response_class=Response, responses={200: PNG},
            summary="A thumbnail that fits in size x size (PNG)")
def get_thumbnail(image_name: ImageName, size: int = Query(256, ge=16, le=1024),
                  invoker: Any = Depends(get_invoker)) -> Response:
    store = _existing(invoker, image_name)
    try:
        thumbnail = store.thumbnail(image_name, size)
    except StoredImageError as exc:  # a file dropped into the outputs folder that is no image the app reads
        raise ApiError(415, "not_an_image", str(exc)) from None
    return Response(encode_png(thumbnail), media_type="image/png")


@router.get("/{image_name}/metadata", response_model=ImageMetadata,
            summary="The graph embedded in an image this app made")
def get_metadata(image_name: ImageName, invoker: Any = Depends(get_invoker)) -> dict[str, Any]:
    store = _existing(invoker, image_name)
    try:
        embedded = store.metadata(image_name) or {}
    except ValueError as exc:  # unreadable file or corrupt metadata
        raise ApiError(415, "not_an_image", f"image {image_name!r}: {exc}") from None
    graph = embedded.get("graph")
    return {"image_name": image_name, "session_id": embedded.get("session_id"), "node_id": embedded.get("node_id"),
            "graph": graph if isinstance(graph, dict) else None}


@router.delete("/{image_name}", response_model=Deleted, summary="Delete an image")
def delete_image(image_name: ImageName, invoker: Any = Depends(get_invoker)) -> dict[str, Any]:
    _existing(invoker, image_name).delete(image_name)
    return {"deleted": image_name}
