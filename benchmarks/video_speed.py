#!/usr/bin/env python3
"""Video throughput of ``mgd-rt infer``: frames/s end to end (decode, model, compose, encode).

Makes a clip here (H.264, a pan across scikit-image's astronaut, ``--size`` and ``--frames``),
then segments it with MODEL in each ``--formats`` entry, timed with the library call the CLI
makes. Prints one markdown row per format.

    python3 benchmarks/video_speed.py model.onnx --size 1280x720 --frames 24
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # an uninstalled checkout runs too

from mgd_rt.runtime.compose import Cutout  # noqa: E402
from mgd_rt.runtime.infer import infer  # noqa: E402
from mgd_rt.runtime.segmenter import Segmenter  # noqa: E402


def make_clip(path: Path, width: int, height: int, frames: int, rate: int = 24) -> Path:
    import av
    from skimage import data

    photo = cv2.resize(data.astronaut(), (int(width * 1.5), int(height * 1.5)))
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            x = int((photo.shape[1] - width) * i / max(frames - 1, 1))  # pan left to right
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(photo[:height, x : x + width]), format="rgb24")
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--formats", default="matte,rgba,background")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp, Segmenter(args.model, device=args.device,
                                                         batch_size=args.batch_size) as seg:
        clip = make_clip(Path(tmp) / "clip.mp4", width, height, args.frames)
        print(f"{seg.describe()}; {args.frames} frames {width}x{height}, batch {args.batch_size}\n")
        print("| format | frames/s |")
        print("|---|---:|")
        for fmt in args.formats.split(","):
            cutout = Cutout(background="blur") if fmt == "background" else Cutout()
            summary = infer(seg, [clip], Path(tmp) / fmt, format=fmt, cutout=cutout, show_progress=False,
                            on_message=lambda line: None)
            assert not summary.failed, summary.failed
            print(f"| {fmt} | {summary.frames / summary.seconds:.2f} |")


if __name__ == "__main__":
    main()
