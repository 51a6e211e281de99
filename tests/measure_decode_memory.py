"""Peak memory of every decoding path for the worst files the site accepts (``make bench-memory``, or
``python -m tests.measure_decode_memory``). A benchmark, not a test: it lives beside the tests because it draws
its files with their helpers (tests/hostile.py), and nothing of it ships.

Each (file, path) pair runs in a fresh Python process: Django set up and the model loaded first, then the
process's peak resident set is reset (``/proc/self/clear_refs``), the path runs, and the increase of the peak
over the resident set before it is reported, in MB (10^6 bytes). Linux only. JSON last.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import django
from PIL import Image, ImageCms

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "carsite.settings")
django.setup()

from django.conf import settings  # noqa: E402

PATHS = ("upload", "worker", "dataset_checks", "flip", "training_loader")


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _files(folder: Path) -> dict[str, Path]:
    """The worst accepted files (and the nearest refused ones), written once into ``folder``."""
    from tests.hostile import display_p3_profile

    made: dict[str, Path] = {}

    def save(name: str, image: Image.Image, fmt: str, **options: Any) -> None:
        path = folder / name
        if not path.exists():
            image.save(path, fmt, **options)
        made[name] = path

    side = int(settings.RECONSTRUCT_MAX_IMAGE_PIXELS**0.5)  # 10,000 for the default 100 megapixels
    save("png-1bit-100mp.png", Image.new("1", (side, side), 1), "PNG", optimize=True)
    save("png-grey16-100mp.png", Image.new("I;16", (side, side), 40000), "PNG")
    save("gif-100mp.gif", Image.new("P", (side, side), 3), "GIF")
    save("png-rgb-70mp.png", Image.new("RGB", (8400, 8400), (200, 40, 40)), "PNG")
    save("png-rgba-70mp.png", Image.new("RGBA", (8400, 8400), (200, 40, 40, 128)), "PNG")
    save("png-rgb-100mp-refused.png", Image.new("RGB", (side, side), (200, 40, 40)), "PNG")
    rgb = Image.new("RGB", (side, side), (200, 40, 40))
    save("jpeg-100mp.jpg", rgb, "JPEG", quality=90)
    turned = Image.Exif()
    turned[0x0112] = 6
    save("jpeg-100mp-orientation6.jpg", rgb, "JPEG", quality=90, exif=turned)
    p3 = ImageCms.ImageCmsProfile(io.BytesIO(display_p3_profile()))
    save("jpeg-100mp-display-p3.jpg", rgb, "JPEG", quality=90, icc_profile=p3.tobytes())
    save("webp-16mp.webp", Image.new("RGB", (4096, 4096), (200, 40, 40)), "WEBP", quality=80)
    save("webp-67mp-refused.webp", Image.new("RGB", (16383, 4096), (200, 40, 40)), "WEBP", quality=80)
    return made


def _run_one(path_name: str, file: Path) -> dict[str, Any]:
    """Run one path on one file in this process and measure it (called in the child)."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from ml import runtime
    from ml.config import ModelConfig
    from ml.decode import ImageDecodeError
    from ml.preprocess import prepare
    from reconstruct.curation import checks
    from reconstruct.curation.services.review import FLIP_MIN_LONG_SIDE, _encode_like

    model = runtime.load_model(settings.BASE_DIR / "ml" / "weights" / "default") if path_name == "worker" else None
    data = file.read_bytes()
    if path_name == "worker":
        # What the worker reads from storage, stored by another process (_store) so that the upload's own
        # allocations do not hide the worker's in this process's peak.
        stored = file.with_name(file.name + ".stored")
        if not stored.exists():
            return {"file": file.name, "path": path_name, "outcome": "refused at upload"}
        data = stored.read_bytes()
    limit = settings.RECONSTRUCT_MAX_IMAGE_PIXELS
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current resident set
    started = time.perf_counter()
    outcome = "accepted"
    try:
        if path_name == "upload":
            from reconstruct.services.uploads import upload_prepare

            prepared = upload_prepare(SimpleUploadedFile(file.name, data))
            outcome = f"accepted, stored {prepared.width}x{prepared.height} {prepared.extension}"
        elif path_name == "worker":
            model.reconstruct(io.BytesIO(data))
        elif path_name == "dataset_checks":
            checks.examine(data, max_pixels=limit)
        elif path_name == "flip":
            decoded = checks.decode_photo(data, limit, mirror=True)  # as dataset_image_flip does
            size = f"{decoded.image.width}x{decoded.image.height}"
            if decoded.reduced and max(decoded.image.size) < FLIP_MIN_LONG_SIDE:
                outcome = f"refused by dataset_image_flip (would be kept at {size})"
            else:
                _encode_like(decoded.image, decoded.format)
                outcome = f"accepted, flipped at {size}"
        elif path_name == "training_loader":
            prepare(str(file), ModelConfig())
    except (ImageDecodeError, checks.CheckError, Exception) as error:
        outcome = f"refused: {error}"
    seconds = time.perf_counter() - started
    return {
        "file": file.name,
        "path": path_name,
        "bytes": file.stat().st_size,
        "peak_increase_mb": round((_status("VmHWM") - before) / 1e6, 1),
        "seconds": round(seconds, 2),
        "outcome": outcome,
    }


def _store(file: Path) -> None:
    """Write what the site stores for ``file`` beside it (``.stored``), or nothing when the upload is refused."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from reconstruct.services.uploads import upload_prepare

    stored = file.with_name(file.name + ".stored")
    stored.unlink(missing_ok=True)
    try:
        stored.write_bytes(upload_prepare(SimpleUploadedFile(file.name, file.read_bytes())).content)
    except Exception as error:  # refused: the worker never sees it
        print(error, file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "carsite-decode-memory"))
    parser.add_argument("--one", nargs=2, metavar=("PATH", "FILE"), help=f"run one of {PATHS} on FILE here")
    parser.add_argument("--store", metavar="FILE", help="write what the site stores for FILE beside it")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(_run_one(args.one[0], Path(args.one[1]))))
        return
    if args.store:
        _store(Path(args.store))
        return
    where = Path(args.folder)
    where.mkdir(parents=True, exist_ok=True)
    results = []
    for file in _files(where).values():
        command = [sys.executable, "-m", "tests.measure_decode_memory", "--store", str(file)]
        subprocess.run(command, capture_output=True, cwd=settings.BASE_DIR, check=False)
        for path_name in PATHS:
            child = subprocess.run(
                [sys.executable, "-m", "tests.measure_decode_memory", "--one", path_name, str(file)],
                capture_output=True,
                text=True,
                cwd=settings.BASE_DIR,
                check=False,
            )
            line = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else ""
            result = json.loads(line) if line.startswith("{") else {"file": file.name, "path": path_name}
            if not line.startswith("{"):
                result["error"] = child.stderr[-500:]
            results.append(result)
            print(json.dumps(result), file=sys.stderr)
    summary = {
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
        "worst_peak_increase_mb": max(r.get("peak_increase_mb", 0) for r in results),
        "results": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
