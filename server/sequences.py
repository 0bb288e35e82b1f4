"""POST /v1/sd1.5-outpaint/zoom (an unlimited zoom-out video) and /pan (a panorama): chains of outpaints.

Both take the blocking route's JSON body (same parsing, same fields, same validation: app.py's
`serve`) plus their own fields, and answer like it: the same headers, errors, Idempotency-Key and
credit rules. What differs:

- the price is the configured price x the outpaints the chain runs, known from the body before any
  runs (zoom_steps; for a panorama `engine/pan.plan_panorama`, which `panorama` itself executes) and
  reserved whole before any compute (406 when short); charged as the response is sent, refunded on
  any failure, disconnect, timeout or shutdown (app.py);
- the chain holds one queue slot and one worker for its whole run (its outpaints need each other in
  turn: more slots would only idle), and its deadline is the server's timeout x its outpaints;
- `scale`, `offset_x` and `offset_y` are set by the chain itself: sending them is a 400 naming the field.

The engine parts are engine/zoom.py and engine/pan.py (docs/zoom-and-pan.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, Security
from fastapi.responses import Response

from outpaint.core.errors import InvalidRequest
from outpaint.core.geometry import CANVAS_MULTIPLE
from outpaint.engine.animation import ANIMATION_FORMATS, encode_animation
from outpaint.engine.canvas import SourceImage
from outpaint.engine.pan import check_opaque as check_opaque_pan
from outpaint.engine.pan import fitted_width, panorama, plan_panorama
from outpaint.engine.pipeline import Outpainter, OutpaintResult
from outpaint.engine.request import FIELDS, FieldSpec, OutpaintRequest, field_value
from outpaint.engine.zoom import ZOOM_SCALE_RANGE, video_frames, zoom_keyframes, zoom_video
from outpaint.engine.zoom import check_opaque as check_opaque_zoom

from .app import API_KEY, ROUTE, ChargedImage, Delivery, Job, OutpaintService, jpeg_bytes, seam_header, warning_headers
from .gate import Ticket
from .schema import error_response, number_property, request_schema

ZOOM_ROUTE = ROUTE + "/zoom"
PAN_ROUTE = ROUTE + "/pan"
MAX_FRAMES_PER_STEP = 48
SET_BY_THE_CHAIN = ("scale", "offset_x", "offset_y")
DEFAULT_FORMAT = "webp"


def zoom_fields(max_zoom_steps: int) -> dict[str, FieldSpec]:
    return {
        "zoom_steps": FieldSpec(int, min(4, max_zoom_steps), 1, max_zoom_steps),
        "zoom_scale": FieldSpec(float, 0.5, *ZOOM_SCALE_RANGE),
        "frames_per_step": FieldSpec(int, 24, 1, MAX_FRAMES_PER_STEP),
        "fps": FieldSpec(float, 24.0, 1.0, 60.0),
    }


def pan_fields(max_pan_width: int) -> dict[str, FieldSpec]:
    # No defaults: pan_width is required, chunk defaults to half the window (img_width).
    return {
        "pan_width": FieldSpec(int, 0, CANVAS_MULTIPLE, max_pan_width),
        "chunk": FieldSpec(int, 0, CANVAS_MULTIPLE, FIELDS["img_width"].high - CANVAS_MULTIPLE),
    }


_DESCRIPTIONS = {
    "zoom_steps": "zoom-outs to chain, one outpaint (and one price) each; the video flies out through all",
    "zoom_scale": "size of each frame inside the next (0.5: every step zooms out 2x)",
    "frames_per_step": "video frames per zoom step (the video has zoom_steps x frames_per_step + 1)",
    "fps": "video frames per second",
    "pan_width": "the panorama's width (px); img_width is each outpaint's window, img_height the panorama's height",
    "chunk": "new columns per outpaint, from 64 to img_width - 64 (default img_width / 2)",
}


class SequenceRoutes:
    """The two routes' own parts (the `prepare` of app.py's `serve`), bound to one service."""

    def __init__(self, service: OutpaintService) -> None:
        self.service = service
        self.config = service.config
        self.zoom_specs = zoom_fields(self.config.max_zoom_steps)
        self.pan_specs = pan_fields(self.config.max_pan_width)

    # -- zoom ------------------------------------------------------------------------------------

    def prepare_zoom(self, fields: dict[str, Any], request: OutpaintRequest, source: SourceImage) -> Job:
        _reject_placement(fields, "the zoom: each step places the previous frame at zoom_scale in the middle")
        steps = int(field_value("zoom_steps", fields.get("zoom_steps"), self.zoom_specs["zoom_steps"]))
        scale = float(field_value("zoom_scale", fields.get("zoom_scale"), self.zoom_specs["zoom_scale"]))
        per_step = int(field_value("frames_per_step", fields.get("frames_per_step"),
                                   self.zoom_specs["frames_per_step"]))
        fps = float(field_value("fps", fields.get("fps"), self.zoom_specs["fps"]))
        fmt = _format(fields.get("format"))
        frame_pixels = request.img_width * request.img_height
        frames = video_frames(steps, per_step)
        limit = self.config.max_video_pixels
        if frames * frame_pixels > limit:
            fits = (limit // frame_pixels - 1) // steps
            raise InvalidRequest("frames_per_step", f"the video would be {frames} frames of {request.img_width}x"
                                 f"{request.img_height}, {frames * frame_pixels} pixels, over this server's limit of "
                                 f"{limit}; at this size and zoom_steps at most {fits} frames per step fit"
                                 if fits >= 1 else
                                 f"even 1 frame per step is over this server's video limit of {limit} pixels at "
                                 f"{request.img_width}x{request.img_height} with {steps} zoom_steps: ask for "
                                 "fewer zoom_steps or a smaller frame")
        check_opaque_zoom(source)
        band = request.mask_expand

        def work(pipeline: Outpainter, ticket: Ticket) -> tuple[list[OutpaintResult], bytes, int]:
            keyframes, results = zoom_keyframes(pipeline, source, request, steps, scale)
            # Rendering and encoding take seconds at large sizes: a client that left stops them too.
            data, count = encode_animation(zoom_video(keyframes, per_step, scale, band), fmt, fps,
                                           on_frame=lambda _i: ticket.check(None))
            return results, data, count

        async def run(ticket: Ticket) -> Delivery:
            results, data, count = await self.service.gate.run_sequence(work, steps, ticket)
            return Delivery(data, ANIMATION_FORMATS[fmt], {**chain_headers(results), "x-frames": str(count)})

        return Job(request, steps, self._what("zoom", steps), run)

    # -- panorama --------------------------------------------------------------------------------

    def prepare_pan(self, fields: dict[str, Any], request: OutpaintRequest, source: SourceImage) -> Job:
        _reject_placement(fields, "the panorama: each outpaint places the panorama's edge in its window")
        if fields.get("pan_width") is None:
            raise InvalidRequest("pan_width", f"is required: the panorama's width in pixels, "
                                 f"{self.pan_specs['pan_width'].describe()}")
        width = int(field_value("pan_width", fields["pan_width"], self.pan_specs["pan_width"]))
        chunk = None if fields.get("chunk") is None else int(
            field_value("chunk", fields["chunk"], self.pan_specs["chunk"]))
        check_opaque_pan(source)
        height, window = request.img_height, request.img_width
        source_h, source_w = source.known.shape
        fitted = fitted_width(source_w, source_h, height)
        try:
            plan = plan_panorama(fitted, window, width, chunk)
        except InvalidRequest as exc:
            if exc.field == "width":
                raise InvalidRequest("pan_width", f"must be wider than the source scaled to img_height ({fitted} px "
                                     f"at {height}) and at most {self.config.max_pan_width}, got {width}") from None
            raise
        outpaints = len(plan.windows)
        if outpaints > self.config.max_pan_outpaints:
            raise InvalidRequest("pan_width", f"a panorama {width} px wide grown from {fitted} px in windows of "
                                 f"{window} adding {chunk or window // 2} each needs {outpaints} outpaints, over this "
                                 f"server's limit of {self.config.max_pan_outpaints}: ask for a narrower pan_width, "
                                 "a larger chunk or a wider img_width window")
        quality = self.config.jpeg_quality

        def work(pipeline: Outpainter, _ticket: Ticket) -> tuple[list[OutpaintResult], bytes, tuple[int, int]]:
            image, columns, results = panorama(pipeline, source, request, width, chunk)
            return results, jpeg_bytes(image, quality), columns

        async def run(ticket: Ticket) -> Delivery:
            results, jpeg, (start, stop) = await self.service.gate.run_sequence(work, outpaints, ticket)
            return Delivery(jpeg, ChargedImage.media_type,
                            {**chain_headers(results), "x-source-columns": f"{start},{stop}"})

        return Job(request, outpaints, self._what("panorama", outpaints), run)

    def _what(self, kind: str, outpaints: int) -> str:
        price = self.config.price
        return f"this {kind} ({outpaints} outpaints at {price} credit{'s' if price != 1 else ''} each)"


def chain_headers(results: list[OutpaintResult]) -> dict[str, str]:
    """The blocking route's headers for a chain: `x-seed` is the first outpaint's (outpaint k used
    x-seed + k), `x-seam-score` the worst (highest) of the outpaints' scores, so a client that retries
    on a bad seam retries when any step has one; `x-seam-scores` lists each, `-` where an outpaint had
    no boundary; `x-outpaints` counts them (and the price); `x-warnings` joins the distinct warnings."""
    seams = [r.seam for r in results]
    scored = [s for s in seams if s is not None]
    warnings = list(dict.fromkeys(w for r in results for w in r.warnings))
    return {
        "x-seed": str(results[0].seed),
        **seam_header(max(scored) if scored else None),
        "x-seam-scores": ",".join("-" if s is None else f"{s:.3f}" for s in seams),
        "x-outpaints": str(len(results)),
        **warning_headers(warnings),
    }


def _reject_placement(fields: Mapping[str, Any], by: str) -> None:
    for name in SET_BY_THE_CHAIN:
        if fields.get(name) is not None:
            raise InvalidRequest(name, f"is set by {by}; leave it out (or null)")


def _format(value: Any) -> str:
    if value is None:
        return DEFAULT_FORMAT
    if not isinstance(value, str) or value.lower() not in ANIMATION_FORMATS:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise InvalidRequest("format", f"must be one of {', '.join(ANIMATION_FORMATS)}; got {shown}")
    return value.lower()


def _chain_schema(schedulers: tuple[str, ...], own: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema = request_schema(schedulers)
    for name in SET_BY_THE_CHAIN:
        del schema["properties"][name]
    schema["properties"].update(own)
    schema["required"] = [*schema["required"], *required]
    return schema


def register_sequence_routes(app: FastAPI, service: OutpaintService) -> None:
    """Add POST {ROUTE}/zoom and {ROUTE}/pan to `app` (create_app calls it)."""
    routes = SequenceRoutes(service)
    schedulers = service.pipeline.scheduler_names
    common_errors = {
        400: error_response("as the blocking route, and: a zoom or panorama field out of range, scale/offset_x/"
                            "offset_y sent, a transparent source, a chain over this server's limits"),
        401: error_response("missing or unknown x-api-key"),
        406: error_response("not enough credits for every outpaint of the chain (nothing charged)",
                            headers=("x-remaining-credits",)),
        409: error_response("a request with this Idempotency-Key is still running", headers=("retry-after",)),
        422: error_response("this Idempotency-Key was used with another request body or route"),
        413: error_response("body or decoded image larger than the configured limits, or one outpaint cannot "
                            "finish within the server's time limit"),
        415: error_response("the body is not application/json"),
        500: error_response("internal failure (every credit is refunded)"),
        503: error_response("queue full, server draining or deadline exceeded", headers=("retry-after",)),
    }
    chain_header_names = ("x-seed", "x-seam-score", "x-seam-scores", "x-outpaints", "x-remaining-credits",
                          "x-request-id", "x-warnings")
    binary = {"schema": {"type": "string", "format": "binary"}}

    zoom_own = {name: number_property(spec, _DESCRIPTIONS[name]) for name, spec in routes.zoom_specs.items()}
    zoom_own["format"] = {"type": "string", "enum": list(ANIMATION_FORMATS), "default": DEFAULT_FORMAT,
                          "description": "the video's format: animated WebP or GIF"}
    zoom_own["img_width"] = {**request_schema(schedulers)["properties"]["img_width"]}
    zoom_own["img_width"]["description"] = "the video's frame width (px); " + FIELDS["img_width"].describe()
    zoom_own["img_height"] = {**request_schema(schedulers)["properties"]["img_height"]}
    zoom_own["img_height"]["description"] = "the video's frame height (px); " + FIELDS["img_height"].describe()

    @app.post(
        ZOOM_ROUTE,
        summary="Zoom out of an image, step after step, as a video",
        description="zoom_steps chained outpaints, each placing the previous frame at zoom_scale in the middle "
                    "of a frame of img_width x img_height, rendered as one continuous zoom-out (docs/api.md). "
                    "Costs the price once per zoom step, reserved before any compute.",
        response_class=Response,
        responses={
            200: {"description": "the zoom-out video, frames of exactly img_width x img_height",
                  "content": {media: binary for media in ANIMATION_FORMATS.values()},
                  "headers": {h: {"schema": {"type": "string"}} for h in (*chain_header_names, "x-frames")}},
            **common_errors,
        },
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": _chain_schema(schedulers, zoom_own)}}}},
    )
    async def zoom(request: Request, api_key: str | None = Security(API_KEY)) -> Response:
        return await service.serve(request, api_key, routes.prepare_zoom, fingerprint_scope=b"zoom")

    pan_own: dict[str, Any] = {
        "pan_width": number_property(routes.pan_specs["pan_width"], _DESCRIPTIONS["pan_width"], default=False),
        "chunk": number_property(routes.pan_specs["chunk"], _DESCRIPTIONS["chunk"], default=False),
    }
    pan_own["img_width"] = {**request_schema(schedulers)["properties"]["img_width"]}
    pan_own["img_width"]["description"] = "each outpaint's window (px); " + FIELDS["img_width"].describe()
    pan_own["img_height"] = {**request_schema(schedulers)["properties"]["img_height"]}
    pan_own["img_height"]["description"] = ("the panorama's height (px): the source is scaled to it; "
                                            + FIELDS["img_height"].describe())

    @app.post(
        PAN_ROUTE,
        summary="Extend an image left and right into a panorama",
        description="Chained outpaints of img_width-wide windows grow the source (scaled to img_height) to "
                    "pan_width, alternating sides so that it ends up in the middle (docs/api.md). Costs the price "
                    "once per outpaint (the number follows from the sizes; x-outpaints says it), reserved before "
                    "any compute.",
        response_class=Response,
        responses={
            200: {"description": "the panorama, exactly pan_width x img_height",
                  "content": {"image/jpeg": binary},
                  "headers": {h: {"schema": {"type": "string"}} for h in (*chain_header_names, "x-source-columns")}},
            **common_errors,
        },
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": _chain_schema(schedulers, pan_own, ("pan_width",))}}}},
    )
    async def pan(request: Request, api_key: str | None = Security(API_KEY)) -> Response:
        return await service.serve(request, api_key, routes.prepare_pan, fingerprint_scope=b"pan")

