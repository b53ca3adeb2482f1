"""The FastAPI application: the page (static files shipped in the package) and the HTTP API.

``POST /v1/segment`` takes one image (the raw body, or one file in a multipart form) and answers
with the image in the asked format; ``GET /v1/health``, ``GET /v1/model``; ``/docs`` is the
framework's OpenAPI page. Every request passes the same checks in the same order, cheapest
first: token (401), bytes (413), image header and pixels (413 / 422), query (422), queue room
(503 + Retry-After); only then does it wait for the model. A decode failure is that request's
422 and nothing else's: the runtime's stream returns failures as per-image results.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import logging
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from PIL import ImageColor
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from mgd_rt.app.batching import Batcher, QueueFull
from mgd_rt.app.cache import ResultCache
from mgd_rt.app.settings import AppSettings
from mgd_rt.errors import MgdRtError, first_line
from mgd_rt.runtime.compose import Cutout
from mgd_rt.runtime.image_io import TooManyPixels, image_size
from mgd_rt.runtime.outputs import FORMATS, write_result_stream
from mgd_rt.runtime.segmenter import Result, Segmenter
from mgd_rt.version import __version__

STATIC = Path(__file__).resolve().parent / "static"
MULTIPART_SLACK = 64 * 1024  # a multipart body is the file plus boundaries and part headers
# the runtime's format table, read not copied: a format added there appears here
# module level: FastAPI resolves the endpoints' string annotations in the module's globals
BEARER = HTTPBearer(auto_error=False)
Format = Enum("Format", {name: name for name in FORMATS}, type=str)  # type: ignore[misc]

log = logging.getLogger(__name__)


MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg"}


@dataclass
class Job:
    path: Path  # the upload, written to the app's private folder: the runtime's decoder reads files
    tile: bool


def _model_info(segmenter: Segmenter, settings: AppSettings, tiling: bool) -> dict[str, Any]:
    backend = segmenter.backend
    return {
        "variant": backend.variant, "image_size": segmenter.image_size, "precision": backend.precision,
        "backend": backend.name, "device": backend.device, "trained": backend.trained,
        "description": segmenter.describe(), "formats": list(FORMATS), "tile": tiling,
        "max_batch": settings.max_batch, "queue_size": settings.queue_size, "max_bytes": settings.max_bytes,
        "max_pixels": settings.max_pixels, "version": __version__,
    }


def _cutout(background: str | None, invert: bool, fmt: str) -> Cutout:
    """The runtime's cut-out settings from the query. Only a colour or ``blur``: the runtime also takes an
    image path, which over HTTP would let a client composite any image file of the server into its answer."""
    if background is None:
        return Cutout(invert=invert)
    if fmt != "background":
        raise HTTPException(422, f"background applies to format=background, not format={fmt}")
    spec = f"#{background}" if re.fullmatch(r"[0-9a-fA-F]{3}|[0-9a-fA-F]{6}", background) else background
    if spec != "blur":
        try:
            ImageColor.getrgb(spec)
        except ValueError:
            raise HTTPException(422, f"background={background!r}: give a colour (white, 00ff00, %2300ff00) "
                                     "or blur") from None
    return Cutout(background=spec, invert=invert)


def _encode(result: Result, fmt: str, threshold: float, cutout: Cutout) -> bytes:
    buffer = io.BytesIO()
    write_result_stream(result, buffer, fmt, threshold, cutout)
    return buffer.getvalue()


def _check_header(data: bytes, name: str, max_pixels: int) -> None:
    """Refuse what is not an image, or too many pixels, from the header alone (no decode, no queue slot)."""
    try:
        image_size(data, name, max_pixels)
    except TooManyPixels as exc:
        raise HTTPException(413, str(exc)) from None
    except MgdRtError as exc:
        raise HTTPException(422, str(exc)) from None


async def _read_upload(request: Request, max_bytes: int) -> tuple[str, bytes]:
    """(file name, bytes) of the one image in the body; 413 past ``max_bytes`` without reading further."""
    too_large = HTTPException(413, f"upload larger than the limit of {max_bytes} bytes (--max-bytes)")
    cap = max_bytes + MULTIPART_SLACK
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        raise too_large  # refused before a byte of the body is read
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():  # a chunked body has no length: count as it arrives
        total += len(chunk)
        if total > cap:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    name, data = "upload", body
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async def once() -> AsyncIterator[bytes]:
            yield body

        try:
            form = await MultiPartParser(request.headers, once(), max_files=4, max_fields=16).parse()
        except MultiPartException as exc:
            raise HTTPException(422, f"malformed multipart form: {exc.message}") from None
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if len(files) != 1:
            raise HTTPException(422, f"send exactly one image file per request (the form has {len(files)})")
        name, data = files[0].filename or "upload", await files[0].read()
        await form.close()
    if not data:
        raise HTTPException(422, "empty upload: send the image as the request body or as one multipart file")
    if len(data) > max_bytes:
        raise too_large
    return name, data


def create_app(segmenter: Segmenter, settings: AppSettings | None = None) -> FastAPI:
    """The app around ``segmenter`` (the caller keeps it and closes it). ``tile=true`` runs a second
    Segmenter on the same loaded backend, so the model is in memory once."""
    settings = settings or AppSettings()
    segmenters: dict[bool, Segmenter] = {segmenter.tile: segmenter}
    if segmenter.tta.mode == "none":  # tiling and TTA exclude each other in the runtime
        segmenters[not segmenter.tile] = Segmenter(
            segmenter.backend, batch_size=segmenter.batch_size, tile=not segmenter.tile,
            tile_scale=segmenter.tile_scale if not segmenter.tile else None, workers=segmenter.workers)

    def run(jobs: Sequence[Job]) -> list[Result]:
        results: list[Result | None] = [None] * len(jobs)
        try:
            for tile, seg in segmenters.items():
                index = [i for i, job in enumerate(jobs) if job.tile == tile]
                for i, result in zip(index, seg.stream([jobs[i].path for i in index]), strict=True):
                    results[i] = result
        finally:  # decoded now (or failed): the uploads' files are no longer needed
            for job in jobs:
                job.path.unlink(missing_ok=True)
        return results  # type: ignore[return-value]

    workdir = Path(tempfile.mkdtemp(prefix="mgd-rt-app-"))
    cache = ResultCache(settings.cache_bytes)
    batcher: Batcher[Job, Result] = Batcher(run, max_batch=settings.max_batch, capacity=settings.queue_size,
                                            wait_s=settings.batch_wait_ms / 1000.0)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()
        shutil.rmtree(workdir, ignore_errors=True)

    app = FastAPI(title="mgd-rt", version=__version__, lifespan=lifespan,
                  description="MGD-SAM2 segmentation: one image in, a matte, mask, cut-out or overlay out.")
    app.state.batcher = batcher
    def authorised(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if settings.token is None:
            return
        given = credentials.credentials.encode() if credentials else b""
        if not hmac.compare_digest(given, settings.token.encode()):  # constant time: no timing oracle
            raise HTTPException(401, "missing or wrong token: send the header 'Authorization: Bearer TOKEN'",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # open without a token: load balancers and probes call it, and it says nothing about the model
    @app.get("/v1/health", summary="Liveness and queue state")
    def health() -> dict[str, Any]:
        return {"status": "ok", "waiting": batcher.waiting, "queue_size": settings.queue_size,
                "batches": batcher.batches, "largest_batch": batcher.largest, "cache_hits": cache.hits}

    @app.get("/v1/model", summary="The loaded model", dependencies=[Depends(authorised)])
    def model() -> dict[str, Any]:
        return _model_info(segmenter, settings, tiling=True in segmenters)

    @app.post(
        "/v1/segment", summary="Segment one image", dependencies=[Depends(authorised)],
        response_class=Response,
        responses={200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "the encoded image"},
                   413: {"description": "too many bytes or pixels"}, 422: {"description": "not a usable image"},
                   503: {"description": "queue full; retry after Retry-After seconds"}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "string", "format": "binary"}}, "required": ["file"]}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    )
    async def segment(
        request: Request,
        fmt: Annotated[Format, Query(alias="format", description="matte: 8-bit probability PNG; binary: 0/255 PNG "
                                     "at threshold; rgba: cut-out PNG; overlay: JPEG to judge at a glance; "
                                     "background: JPEG of the object on a new background")
                       ] = Format.matte,  # type: ignore[attr-defined]
        threshold: Annotated[float, Query(gt=0.0, lt=1.0, description="for binary and overlay")] = 0.5,
        tile: Annotated[bool, Query(description="add high-resolution detail from S x S windows (slower)")] = False,
        background: Annotated[str | None, Query(description="format=background: the colour to composite onto "
                                                "(white, 00ff00, %2300ff00) or blur (default: white)")] = None,
        invert: Annotated[bool, Query(description="keep the background instead of the object")] = False,
    ) -> Response:
        start = time.perf_counter()
        name, data = await _read_upload(request, settings.max_bytes)
        _check_header(data, name, settings.max_pixels)
        cutout = _cutout(background, invert, fmt.value)
        if tile not in segmenters:
            raise HTTPException(422, "tile=true is not available: this server runs with test-time augmentation")
        path = workdir / uuid.uuid4().hex
        await run_in_threadpool(path.write_bytes, data)
        key = f"{hashlib.sha256(data).hexdigest()}:{int(tile)}"
        try:
            future, cached = cache.get_or_submit(key, lambda: batcher.submit(Job(path, tile)))
        except QueueFull as exc:
            path.unlink(missing_ok=True)
            raise HTTPException(503, f"busy: {exc}; retry in {settings.retry_after_s} s",
                                headers={"Retry-After": str(settings.retry_after_s)}) from None
        if cached:
            path.unlink(missing_ok=True)
        try:
            # shielded: a client that hangs up must not cancel a run other requests share
            result = await asyncio.shield(asyncio.wrap_future(future))
        except MgdRtError as exc:
            raise HTTPException(500, f"the model failed: {first_line(exc)}") from None
        if not result.ok:
            raise HTTPException(422, str(result.error).replace(str(result.source), name))
        encode_start = time.perf_counter()
        content = await run_in_threadpool(_encode, result, fmt.value, threshold, cutout)
        # a cached answer's decode and model times belong to the request that ran it
        end = time.perf_counter()
        timing = {**({} if cached else result.seconds), "encode": end - encode_start, "total": end - start}
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).stem) or "upload"  # a header is latin-1, unquoted
        suffix = FORMATS[fmt.value]
        return Response(content, media_type=MEDIA_TYPES[suffix], headers={
            "Content-Disposition": f'inline; filename="{stem}.{fmt.value}{suffix}"',
            # the standard header browsers' developer tools show: where each request's time went
            "Server-Timing": ", ".join(f"{k};dur={1000 * v:.1f}" for k, v in timing.items()),
            "X-Mgd-Rt-Cache": "hit" if cached else "miss",
        })

    return app
