"""Cold start and warm latency inside the bundle's own interpreter (what `make lambda-bench` runs).

Two halves in one file. bundle_measure() runs on the build machine: it builds the bundle, unzips it into a scratch
folder and runs THIS FILE by path in an isolated interpreter (`python -I -S deploy/measure.py TASK_ROOT RUNTIME
REPEATS`) that sees only the unzipped bundle and boto3, as on Lambda. There, measure() does the timing and prints
one line of JSON. So the module imports nothing at the top but the standard library, and nothing from `deploy`
outside bundle_measure(): neither this package nor the project's .venv is on that interpreter's path.
"""

from __future__ import annotations

# The standard library only, and only what the measurement needs: the rest would count in its peak RSS.
import json
import resource
import sys
import time


def measure(repeats: int = 20) -> dict[str, object]:
    """Inside the bundle: seconds (`*_s`) for the imports, model load, first and median warm reconstruction and
    Django set-up, the peak RSS in MiB (`peak_rss_mb`) and the library versions.

    The bundle and the runtime folder must already be on sys.path; raises ImportError when they are not.
    """
    times: dict[str, object] = {}
    t0 = time.perf_counter()
    import numpy
    import onnxruntime
    import PIL.Image

    from ml import runtime

    times["import_ml_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = runtime.load_model(runtime.DEFAULT_MODEL_DIR)
    times["model_load_s"] = time.perf_counter() - t0
    image = PIL.Image.new("RGB", (640, 480), (90, 120, 160))
    t0 = time.perf_counter()
    model.reconstruct(image)
    times["first_reconstruction_s"] = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.reconstruct(image)
        warm.append(time.perf_counter() - t0)
    warm.sort()
    times["warm_reconstruction_median_s"] = warm[len(warm) // 2]
    times["cold_start_ml_s"] = times["import_ml_s"] + times["model_load_s"] + times["first_reconstruction_s"]
    t0 = time.perf_counter()
    import django

    django.setup()
    from django.core.wsgi import get_wsgi_application

    get_wsgi_application()
    import reconstruct.services.reconstructions  # noqa: F401  (the site: registry, storage, models)

    times["django_setup_s"] = time.perf_counter() - t0
    times["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times["versions"] = {
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "model": model.version,
    }
    return times


def bundle_measure(stage: str, repeats: int = 20) -> dict[str, object]:
    """Build (or reuse) the stage's bundle and measure() it in an isolated interpreter, as on Lambda.

    Raises SystemExit with the interpreter's stderr when the measurement fails, or when the bundle fails its check.
    """
    import subprocess
    import tempfile
    import zipfile
    from pathlib import Path

    from deploy.build import bundle_build, runtime_build

    target, _report = bundle_build(stage)
    runtime_dir = runtime_build()
    with tempfile.TemporaryDirectory(prefix="lambda-measure-") as scratch:
        bundle_dir = Path(scratch) / "task"
        with zipfile.ZipFile(target) as archive:
            archive.extractall(bundle_dir)
        environment = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "AWS_LAMBDA_FUNCTION_NAME": f"carsite-{stage}",
            "AWS_REGION": "us-east-1",
            "DJANGO_SETTINGS_MODULE": "carsite.settings",
            "SECRET_KEY": "measure-only-" + "x" * 40,
            "DATABASE_URL": "postgres://measure@127.0.0.1:9/measure",
        }
        script = Path(__file__).resolve()
        completed = subprocess.run(
            [sys.executable, "-I", "-S", str(script), str(bundle_dir), str(runtime_dir), str(repeats)],
            cwd=bundle_dir,
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
    if completed.returncode != 0:
        raise SystemExit(completed.stderr)
    return json.loads(completed.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    # In the bundle's interpreter: python -I -S measure.py TASK_ROOT RUNTIME_DIR REPEATS
    task_root, runtime_root, repeat_count = sys.argv[1:4]
    sys.path[:0] = [task_root, runtime_root]
    print(json.dumps(measure(int(repeat_count))))
