"""Thumbnail benchmark (issue 5): time per image and peak memory of each path.

    .venv/bin/python -m bench.thumbnail_bench [--images 20] [--rounds 5] [--side 256]

A fixed set of generated 1024x1024 PNGs (seeded noise over smooth colour
fields, so they compress like photographs: about 1.5 MB each) goes through
each path in its own process pinned to one core: ``decode`` (Pillow open +
load: the floor any Pillow thumbnail pays), ``ours`` (shared.adapters.imaging, JPEG
and WebP), the previous code (``thumbnail(reducing_gap=2.0)``), a naive
Lanczos resize and libvips' ``thumbnail_buffer`` (pyvips, one thread, its
operation cache off). Time is the best of ``--rounds`` passes; peak memory is
the process's maximum RSS minus that of the same process doing everything
but the thumbnails. It asserts nothing: these machines are noisy.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageOps

SIZE = 1024
PATHS = ("decode", "ours", "ours_webp", "previous", "lanczos", "vips")
LABELS = {
    "decode": "Pillow decode only (open + load)",
    "ours": "ours: make_thumbnail, JPEG (shared/adapters/imaging.py)",
    "ours_webp": "ours: make_thumbnail, WebP",
    "previous": "Pillow thumbnail(reducing_gap=2.0) (the previous code)",
    "lanczos": "Pillow resize(LANCZOS) naive",
    "vips": "libvips thumbnail_buffer (pyvips)",
}


def generate(count: int, directory: Path) -> list[Path]:
    """The fixed image set: the same bytes on every run."""
    paths = []
    for seed in range(count):
        rng = random.Random(seed)
        field = Image.frombytes("RGB", (32, 32), rng.randbytes(32 * 32 * 3))
        base = field.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        noise = Image.frombytes("L", (SIZE, SIZE), rng.randbytes(SIZE * SIZE)).convert("RGB")
        image = Image.blend(base, noise, 0.08)
        path = directory / f"img_{seed:02d}.png"
        image.save(path, format="PNG")
        paths.append(path)
    return paths


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=85, optimize=True)
    return out.getvalue()


def processor(path: str, side: int) -> Callable[[bytes], bytes]:
    """The function one path runs on each image's bytes."""
    if path == "decode":

        def decode(data: bytes) -> bytes:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
            return b""

        return decode
    if path in ("ours", "ours_webp"):
        from shared.adapters.imaging import make_thumbnail
        from shared.services.ports import ThumbnailSpec

        spec = ThumbnailSpec(longest_side=side, format="webp" if path == "ours_webp" else "jpeg")
        return lambda data: make_thumbnail(data, spec)
    if path == "previous":

        def previous(data: bytes) -> bytes:
            with Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "WEBP")) as image:
                image.draft("RGB", (side, side))
                oriented = ImageOps.exif_transpose(image)
                oriented.thumbnail((side, side), reducing_gap=2.0)
                return _jpeg(oriented)

        return previous
    if path == "lanczos":

        def lanczos(data: bytes) -> bytes:
            with Image.open(io.BytesIO(data)) as image:
                return _jpeg(image.resize((side, side), Image.Resampling.LANCZOS))

        return lanczos
    if path == "vips":
        import pyvips

        pyvips.cache_set_max(0)  # a repeated buffer must not come from the cache

        def vips(data: bytes) -> bytes:
            small = pyvips.Image.thumbnail_buffer(data, side)
            result: bytes = small.jpegsave_buffer(Q=85, optimize_coding=True)
            return result

        return vips
    raise ValueError(f"unknown path {path}")


def child(path: str, files: list[str], rounds: int, side: int, noop: bool) -> dict[str, float]:
    """Run one path in this process and report its figures."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    images = [Path(f).read_bytes() for f in files]
    run = processor(path, side)
    if noop:
        return {"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    sizes = [len(run(data)) for data in images]  # warm-up pass
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for data in images:
            run(data)
        best = min(best, (time.perf_counter() - start) / len(images))
    return {
        "ms": best * 1000,
        "out_kb": sum(sizes) / len(sizes) / 1024,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def measure(path: str, files: list[Path], rounds: int, side: int, noop: bool) -> dict[str, float]:
    env = {**os.environ, "VIPS_CONCURRENCY": "1", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "bench.thumbnail_bench", "--child", path]
    argv += ["--rounds", str(rounds), "--side", str(side), *(["--noop"] if noop else [])]
    argv += [str(f) for f in files]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def available(path: str) -> bool:
    if path != "vips":
        return True
    try:
        import pyvips  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--child", choices=PATHS)
    parser.add_argument("--noop", action="store_true")
    parser.add_argument("files", nargs="*")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.files, args.rounds, args.side, args.noop)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        files = generate(args.images, Path(tmp))
        mean_mb = sum(f.stat().st_size for f in files) / len(files) / 1e6
        print(
            f"{len(files)} generated {SIZE}x{SIZE} PNGs (mean {mean_mb:.2f} MB) -> "
            f"{args.side} px, one core, best of {args.rounds} rounds\n"
        )
        results = {}
        for path in PATHS:
            if not available(path):
                print(f"{path}: skipped (pyvips / libvips not installed)")
                continue
            figures = measure(path, files, args.rounds, args.side, noop=False)
            baseline = measure(path, files, args.rounds, args.side, noop=True)
            figures["peak_mb"] = (figures["maxrss_kb"] - baseline["maxrss_kb"]) / 1024
            results[path] = figures

    decode = results["decode"]["ms"]
    vips = results.get("vips", {}).get("ms")
    print(f"{'path':58} {'ms/img':>7} {'x decode':>9} {'x vips':>7} {'peak MB':>8} {'out KB':>7}")
    for path, f in results.items():
        to_vips = f"{f['ms'] / vips:7.2f}" if vips else "      -"
        out = f"{f['out_kb']:7.1f}" if path != "decode" else "      -"
        print(
            f"{LABELS[path]:58} {f['ms']:7.1f} {f['ms'] / decode:9.3f} {to_vips} "
            f"{f['peak_mb']:8.1f} {out}"
        )
    ours = results["ours"]["ms"] / decode
    print(f"\nours / decode = {ours:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
