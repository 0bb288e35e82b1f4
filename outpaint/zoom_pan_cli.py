"""`outpaint zoom` (an unlimited zoom-out video) and `outpaint pan` (a panorama of any width)."""

from __future__ import annotations

import argparse
from pathlib import Path

from outpaint.request_args import add_engine_arguments, add_request_arguments, prepare


def add_zoom(sub) -> None:
    p = sub.add_parser("zoom", help="zoom out of an image step after step and render the flight as a video "
                                    "(docs/zoom-and-pan.md)")
    add_engine_arguments(p)
    p.add_argument("--image", type=Path, required=True, help="source image (PNG, JPEG or WebP), opaque")
    p.add_argument("--out", type=Path, required=True, help="the video: .webp (animated), .gif or .mp4 (needs ffmpeg)")
    p.add_argument("--zoom-steps", type=int, default=4, help="zoom-outs to chain (default 4)")
    p.add_argument("--zoom-scale", type=float, default=0.5,
                   help="size of the previous image in the next (default 0.5: each step zooms out 2x)")
    p.add_argument("--frames-per-step", type=int, default=24, help="video frames per zoom step (default 24)")
    p.add_argument("--fps", type=float, default=24.0, help="(default 24)")
    p.add_argument("--keyframes", type=Path, help="also write each keyframe as a PNG into this folder")
    add_request_arguments(p)
    p.epilog = ("--width/--height are the video's frame size; --scale and --offset-* are set by the zoom. "
                "Zoom-out k runs with seed --seed + k.")
    p.set_defaults(func=_cmd_zoom)


def _cmd_zoom(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from outpaint.engine.zoom import zoom_keyframes, zoom_video
    from outpaint.video import check_video_path, write_video

    request, source, pipeline = prepare(args, "zoom", check_video_path)
    with tqdm(total=args.zoom_steps, unit="zoom", desc="zooming out") as bar:
        def advance(k: int, event) -> None:
            if event.index + 1 == event.total:
                bar.update(1)

        keyframes, results = zoom_keyframes(pipeline, source, request, args.zoom_steps, args.zoom_scale, advance)
    if args.keyframes is not None:
        from PIL import Image

        args.keyframes.mkdir(parents=True, exist_ok=True)
        for k, frame in enumerate(keyframes):
            Image.fromarray(frame).save(args.keyframes / f"keyframe-{k:02d}.png")
    count = write_video(zoom_video(keyframes, args.frames_per_step, args.zoom_scale, request.mask_expand),
                        args.out, args.fps)
    seams = ", ".join("-" if r.seam is None else f"{r.seam:.2f}" for r in results)
    print(f"seeds {results[0].seed}..{results[-1].seed}; seam scores {seams}; wrote {args.out} ({count} frames)")
    return 0


def add_pan(sub) -> None:
    p = sub.add_parser("pan", help="extend an image left and right into a panorama of any width "
                                   "(docs/zoom-and-pan.md)")
    add_engine_arguments(p)
    p.add_argument("--image", type=Path, required=True, help="source image (PNG, JPEG or WebP), opaque")
    p.add_argument("--out", type=Path, required=True, help="output file (.jpg, .png, .webp)")
    p.add_argument("--pan-width", type=int, required=True, help="the panorama's width in pixels")
    p.add_argument("--chunk", type=int, help="new pixels per outpaint (default half of --width)")
    add_request_arguments(p)
    p.epilog = ("--height is the panorama's height (the source is scaled to it), --width each outpaint's "
                "window (the model's native width suits it); outpaint k runs with seed --seed + k.")
    p.set_defaults(func=_cmd_pan)


def _cmd_pan(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from outpaint.engine.pan import panorama
    from outpaint.run_request import check_output_path, save_image

    request, source, pipeline = prepare(args, "pan", check_output_path)
    with tqdm(unit="outpaint", desc="panning") as bar:
        def advance(k: int, event) -> None:
            if event.index + 1 == event.total:
                bar.update(1)

        image, (start, stop), results = panorama(pipeline, source, request, args.pan_width, args.chunk, advance)
    save_image(image, args.out)
    print(f"{len(results)} outpaints, seeds {results[0].seed}..{results[-1].seed}; the source fills columns "
          f"{start}..{stop}; wrote {args.out} ({image.shape[1]}x{image.shape[0]})")
    return 0
