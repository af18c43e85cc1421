"""The web page of the Serve app (``GET /``): static HTML, CSS and JS shipped in this
folder, no build step and nothing from a CDN, so it works offline.

``GET /`` answers ``index.html``; ``GET /page/{name}`` answers the other files of this
folder, by an allow-list of names (no paths, so no traversal) with their content types.
"""
from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
INDEX = "index.html"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
# Everything the page needs comes from this server; pictures and videos also from blob: URLs
# made in the page (results fetched with the API key, the user's own files).
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "connect-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def assets() -> dict[str, str]:
    """The files ``GET /page/{name}`` may answer: {name: content type}."""
    return {p.name: CONTENT_TYPES[p.suffix] for p in FOLDER.iterdir()
            if p.is_file() and p.suffix in CONTENT_TYPES and p.name != INDEX}


def read_asset(name: str) -> tuple[bytes, str] | None:
    """(bytes, content type) of a page file, or None when ``name`` is not one of them."""
    if name == INDEX:
        return (FOLDER / INDEX).read_bytes(), CONTENT_TYPES[".html"]
    media_type = assets().get(name)
    return None if media_type is None else ((FOLDER / name).read_bytes(), media_type)


def page_response(name: str):
    """The page file ``name`` as a response with the page's security headers; 404 otherwise."""
    from fastapi.responses import Response

    from serve.api import ApiError

    found = read_asset(name)
    if found is None:
        raise ApiError(404, "not_found", f"no page file {name!r}")
    body, media_type = found
    return Response(body, media_type=media_type, headers=HEADERS)


IMAGE_TYPES = ("image/png", "image/jpeg", "application/octet-stream")


def bicubic_png(data: bytes, max_pixels: int) -> bytes:
    """One PNG/JPEG frame -> its plain 3x bicubic upscale as PNG: the baseline the model is
    measured against (``vsr_core.data.degradation.bicubic_upsample``), for the page's compare
    view. Blocking; bad images raise ``InvalidImageError`` (400/413/415)."""
    import torch

    from serve.formats import PNG, encode_frame
    from vsr_core.data.degradation import bicubic_upsample
    from vsr_core.frames import to_tensor, to_uint8
    from vsr_core.image_io import decode_image

    frame = decode_image(data, max_pixels, "frame")
    with torch.inference_mode():
        upscaled = bicubic_upsample(to_tensor(frame)[None])[0]
    return encode_frame(to_uint8(upscaled, in_place=True), PNG)
