"""Serving a exported VAE with ONNX Runtime (numpy + Pillow + onnxruntime; never torch).

    from ml import runtime
    model = runtime.load_model(runtime.DEFAULT_MODEL_DIR)
    result = model.reconstruct(open("car.jpg", "rb"))
    result.model_input, result.reconstruction, result.scores.to_dict(), result.latent

A model directory (written by ``python -m ml.export``) holds ``encoder.onnx`` (``x [B, C, H, W]``
-> ``mu, logvar [B, D]``), ``decoder.onnx`` (``z [B, D]`` -> ``image [B, C, H, W]``) and
``metadata.json`` (the model config, preprocessing, metrics and scoring calibration). Everything
here runs on the model-input pixels inside the letterbox box (see ``ml/preprocess.py``): padding
is never scored.

Works with numpy 1.26 + Pillow 12 + onnxruntime 1.16.3 (the Lambda stack) as well as the current
releases, so it uses no numpy-2-only API.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnxruntime as ort
from numpy.lib.stride_tricks import as_strided
from PIL import Image

from ml.config import ModelConfig
from ml.decode import ImageDecodeError, image_decode
from ml.preprocess import Prepared, prepare, to_image

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "weights" / "default"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
METADATA_FILE = "metadata.json"
# Newest metadata layout this runtime understands (ml/export.py writes it).
FORMAT_VERSION = 1
# Intra-op threads per session unless told otherwise; one process per core is the throughput setup.
THREADS_ENV = "CARSITE_ORT_THREADS"

ImageSource = Image.Image | str | os.PathLike | BinaryIO | bytes

# SSIM constants (Wang, Bovik, Sheikh & Simoncelli, "Image Quality Assessment: From Error
# Visibility to Structural Similarity", IEEE TIP 2004): K1 = 0.01, K2 = 0.03, dynamic range 1,
# an 11x11 Gaussian window with sigma 1.5.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
# PSNR of a perfect reconstruction is infinite; cap it so scores stay finite JSON numbers.
MIN_MSE = 1e-10


# The input is not an image we can decode; ``str(error)`` is meant for a person, ``error.code`` for programs.
ImageError = ImageDecodeError


@dataclass(frozen=True)
class Scores:
    """How well the model reproduced one image (on the model-input pixels inside the box).

    ``mse`` per pixel and channel on [0, 1]; ``psnr`` in dB; ``ssim`` (mean over RGB);
    ``kl`` = KL(q(z|x) || N(0, I)) in nats; ``car_likeness`` in [0, 1], or None when the model
    directory carries no calibration (see ``car_likeness`` below).
    """

    mse: float
    psnr: float
    ssim: float
    kl: float
    car_likeness: float | None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


@dataclass(frozen=True)
class Result:
    model_input: Image.Image  # RGB: what the model saw, letterbox bars removed
    reconstruction: Image.Image  # RGB, same size as model_input
    scores: Scores
    latent: np.ndarray  # [latent_dim] posterior mean


@dataclass(frozen=True)
class BatchOutput:
    """Raw model outputs for a batch: ``mu``, ``logvar`` ``[B, D]``; ``recon`` ``[B, C, H, W]``."""

    mu: np.ndarray
    logvar: np.ndarray
    recon: np.ndarray


def open_source(source: ImageSource) -> Image.Image:
    """Decode ``source`` fully (``ml.decode.image_decode``: upright, sRGB, RGB) or raise :class:`ImageError`.

    A missing file is a programming error, not bad input: ``FileNotFoundError`` passes through.
    """
    return image_decode(source).image


def _ssim_kernel(size: int) -> np.ndarray:
    sigma = SSIM_SIGMA * size / SSIM_WINDOW
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _filter_valid(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of ``[C, H, W]`` with a 1-D ``kernel`` along H then W: ``[C, H - k + 1, W - k + 1]``.

    The windows are read-only strided views, the ones ``sliding_window_view(image, k, axis=1)`` (then ``axis=2``)
    returns, made with ``as_strided`` directly: the same numbers, without ``sliding_window_view``'s checks (about
    20 µs a call, ten calls an SSIM; docs/performance.md, stop 29)."""
    size = len(kernel)
    channels, height, width = image.shape
    c_stride, h_stride, w_stride = image.strides
    windows = (channels, height - size + 1, width, size)
    rows = as_strided(image, windows, (c_stride, h_stride, w_stride, h_stride), writeable=False) @ kernel
    channels, height, width = rows.shape
    c_stride, h_stride, w_stride = rows.strides
    windows = (channels, height, width - size + 1, size)
    return as_strided(rows, windows, (c_stride, h_stride, w_stride, w_stride), writeable=False) @ kernel


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two ``[C, H, W]`` images in [0, 1] (Wang et al. 2004, Gaussian 11x11, sigma 1.5).

    Windows lie fully inside the image ('valid'); an image smaller than 11 pixels on a side gets
    the largest odd window that fits, with sigma scaled by the same factor. Channels are averaged.
    """
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    size = min(SSIM_WINDOW, a.shape[1], a.shape[2])
    size -= 1 - size % 2
    kernel = _ssim_kernel(size)
    mu_a = _filter_valid(a, kernel)
    mu_b = _filter_valid(b, kernel)
    var_a = _filter_valid(a * a, kernel) - mu_a**2
    var_b = _filter_valid(b * b, kernel) - mu_b**2
    cov = _filter_valid(a * b, kernel) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
    denominator = (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return float(np.mean(numerator / denominator))


def kl_divergence(mu: np.ndarray, logvar: np.ndarray) -> float:
    """KL(N(mu, exp(logvar)) || N(0, I)) in nats (Kingma & Welling 2014, appendix B)."""
    mu = mu.astype(np.float64)
    logvar = logvar.astype(np.float64)
    return float(0.5 * np.sum(mu**2 + np.exp(logvar) - 1.0 - logvar))


def crop_box(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``[C, H, W]`` -> the ``[C, h, w]`` part inside ``box = (left, top, right, bottom)``."""
    left, top, right, bottom = box
    return array[:, top:bottom, left:right]


def psnr_from_mse(mse: float) -> float:
    return 10.0 * math.log10(1.0 / max(mse, MIN_MSE))


def _normal_tail(z: float) -> float:
    """P(N(0, 1) > z)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def thumbnail_prediction(target: np.ndarray, size: int) -> np.ndarray:
    """``target`` ``[C, h, w]`` in [0, 1] -> shrunk to ``size x size`` and enlarged back (bicubic)."""
    pixels = np.clip(np.rint(target * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    small = image.resize((size, size), Image.Resampling.BICUBIC)
    back = np.asarray(small.resize(image.size, Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    return back[None] if back.ndim == 2 else back.transpose(2, 0, 1)


def thumbnail_mse(target: np.ndarray, size: int = 16) -> float:
    """Mean squared error of ``thumbnail_prediction`` on ``target`` (the letterbox box's pixels)."""
    return float(np.mean((thumbnail_prediction(target, size).astype(np.float64) - target.astype(np.float64)) ** 2))


def score_features(mse: float, kl: float, logvar: np.ndarray, thumb16_mse: float | None = None) -> dict[str, float]:
    """What the car-likeness calibration can weigh.

    - ``excess_error_db``: how many dB the model's reconstruction error exceeds that of a 16x16
      thumbnail of the same pixels (``thumbnail_mse``). A model of cars reproduces a car about as
      well as a thumbnail does and anything else far worse, while the thumbnail cancels out how hard
      the picture is (a plain wall is easy for both, foliage hard for both). Needs ``thumb16_mse``.
    - ``log_mse``, ``kl``; ``logvar``, the mean posterior log-variance (how unsure the encoder is).
    """
    features = {"log_mse": math.log(max(mse, MIN_MSE)), "kl": kl, "logvar": float(np.mean(logvar, dtype=np.float64))}
    if thumb16_mse is not None:
        features["excess_error_db"] = 10.0 * math.log10(max(mse, MIN_MSE) / max(thumb16_mse, MIN_MSE))
    return features


def car_likeness_z(features: dict[str, float], calibration: dict[str, Any]) -> float:
    """How car-like an image is against the validation cars, in standard deviations: 0 for a
    typical car, negative for less car-like (what ``car_likeness`` turns into a probability).

    ``calibration`` (written by ``ml.export`` from the held-out validation cars) holds the mean and
    standard deviation of each feature and the ``weights`` of their z-scores (a positive weight: a
    larger feature is less car-like); the weighted sum is divided by the weights' norm so that it
    stays a z-score for independent features.
    """
    weights = calibration["weights"]
    score = 0.0
    for name, weight in weights.items():
        stats = calibration["features"][name]
        score += weight * (features[name] - stats["mean"]) / max(stats["std"], 1e-12)
    return -score / max(math.sqrt(sum(w * w for w in weights.values())), 1e-12)


def car_likeness(features: dict[str, float], calibration: dict[str, Any] | None) -> float | None:
    """P(a validation car scores worse than this image), under a normal fit: in [0, 1].

    A typical car lands near 0.5; 0.05 means less car-like than 95% of real cars. None without
    calibration (a model exported without ``--data``).
    """
    if not calibration:
        return None
    return _normal_tail(-car_likeness_z(features, calibration))


def scores_from_arrays(
    target: np.ndarray,
    recon: np.ndarray,
    box: tuple[int, int, int, int],
    mu: np.ndarray,
    logvar: np.ndarray,
    calibration: dict[str, Any] | None = None,
    thumb16_mse: float | None = None,
) -> Scores:
    """Scores of one image: ``target`` and ``recon`` ``[C, H, W]`` in [0, 1], ``mu``/``logvar`` ``[D]``;
    ``thumb16_mse``, the box's ``thumbnail_mse`` when the caller has it already."""
    a = crop_box(target, box).astype(np.float64)
    b = crop_box(recon, box).astype(np.float64)
    mse = float(np.mean((a - b) ** 2))
    kl = kl_divergence(mu, logvar)
    return Scores(
        mse=mse,
        psnr=psnr_from_mse(mse),
        ssim=ssim(a, b),
        kl=kl,
        car_likeness=_car_likeness_of_box(a, mse, kl, logvar, calibration, thumb16_mse),
    )


def _car_likeness_of_box(
    target: np.ndarray,
    mse: float,
    kl: float,
    logvar: np.ndarray,
    calibration: dict[str, Any] | None,
    thumb16_mse: float | None = None,
) -> float | None:
    """``car_likeness`` of one image from its box pixels ``target`` and its scores."""
    if not calibration:  # no car-likeness, and no need for the thumbnail it compares with
        return None
    thumb = thumbnail_mse(target) if thumb16_mse is None else thumb16_mse
    return car_likeness(score_features(mse, kl, logvar, thumb), calibration)


def _threads(threads: int | None) -> int:
    if threads is None:
        value = os.environ.get(THREADS_ENV, "1")
        try:
            threads = int(value)
        except ValueError as error:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}") from error
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return threads


def session_options(threads: int = 1) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads would otherwise spin on a core another worker process needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class Model:
    """An exported VAE. Thread-safe: ONNX Runtime sessions may be run from several threads."""

    def __init__(self, model_dir: str | os.PathLike, threads: int | None = None) -> None:
        self.model_dir = Path(model_dir)
        metadata_path = self.model_dir / METADATA_FILE
        if not metadata_path.is_file():
            raise FileNotFoundError(f"no exported model in {self.model_dir} (missing {METADATA_FILE})")
        self.metadata: dict[str, Any] = json.loads(metadata_path.read_text())
        if self.metadata.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{metadata_path} has format version {self.metadata['format_version']}; "
                f"this runtime reads up to {FORMAT_VERSION}"
            )
        self.version: str = self.metadata["version"]
        self.config = ModelConfig.from_dict(self.metadata["model"])
        self.calibration: dict[str, Any] | None = self.metadata.get("calibration")
        self.threads = _threads(threads)
        options = session_options(self.threads)
        providers = ["CPUExecutionProvider"]
        self._encoder = ort.InferenceSession(str(self.model_dir / ENCODER_FILE), options, providers=providers)
        self._decoder = ort.InferenceSession(str(self.model_dir / DECODER_FILE), options, providers=providers)
        self._x_name = self._encoder.get_inputs()[0].name
        self._z_name = self._decoder.get_inputs()[0].name
        # Dynamic int8 (ml/quantize.py) scales each call's activations by that call's own range, so a photo's
        # result would depend on the other photos of its batch: such a model runs one row at a time (at batch 1
        # to 8 the cost per photo differs by under 7%), and a batch gives exactly what each photo gives alone.
        self._per_row = bool((self.metadata.get("quantization") or {}).get("applied"))

    def __repr__(self) -> str:
        return f"<Model {self.version} from {self.model_dir}>"

    # Arrays in, arrays out: what evaluation and benchmarks use.
    def prepare(self, image: ImageSource) -> Prepared:
        """Decode and letterbox one photo (raises :class:`ImageError` for undecodable input)."""
        return prepare(image, self.config)

    def _session_run(self, session: ort.InferenceSession, name: str, batch: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if not self._per_row or len(batch) <= 1:
            return session.run(None, {name: batch})
        rows = [session.run(None, {name: batch[i : i + 1]}) for i in range(len(batch))]
        return [np.concatenate(outputs) for outputs in zip(*rows, strict=True)]

    def run(self, x: np.ndarray) -> BatchOutput:
        """``x`` ``[B, C, H, W]`` float32 in [0, 1] -> posterior and reconstruction of the mean (each row exactly
        as it would be alone, also for an int8 model)."""
        mu, logvar = self._session_run(self._encoder, self._x_name, x)
        recon = self._session_run(self._decoder, self._z_name, mu)[0]
        return BatchOutput(mu=mu, logvar=logvar, recon=recon)

    def encode_array(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x`` ``[B, C, H, W]`` -> ``mu``, ``logvar`` ``[B, latent_dim]``."""
        mu, logvar = self._session_run(self._encoder, self._x_name, x)
        return mu, logvar

    def decode_array(self, z: np.ndarray) -> np.ndarray:
        """``z`` ``[B, latent_dim]`` -> reconstructions ``[B, C, H, W]`` in [0, 1]."""
        return self._session_run(self._decoder, self._z_name, z)[0]

    # Pictures in, pictures out: what the site uses.
    def reconstruct(self, image: ImageSource) -> Result:
        prepared = self.prepare(image)
        out = self.run(prepared.array[None])
        scores = scores_from_arrays(
            prepared.array, out.recon[0], prepared.box, out.mu[0], out.logvar[0], self.calibration
        )
        return Result(
            model_input=to_image(prepared.array, prepared.box),
            reconstruction=to_image(out.recon[0], prepared.box),
            scores=scores,
            latent=out.mu[0],
        )

    def encode(self, image: ImageSource) -> np.ndarray:
        """The posterior mean ``[latent_dim]``."""
        return self.encode_array(self.prepare(image).array[None])[0][0]

    def decode(self, z: np.ndarray) -> Image.Image:
        """A latent ``[latent_dim]`` -> the full ``width x height`` frame as RGB."""
        z = np.asarray(z, dtype=np.float32).reshape(-1)
        if z.shape != (self.config.latent_dim,):
            raise ValueError(f"expected a latent of {self.config.latent_dim} numbers, got {z.size}")
        return to_image(self.decode_array(z[None])[0])

    def score(self, image: ImageSource) -> Scores:
        return self.reconstruct(image).scores

    def car_likeness(self, image: ImageSource) -> float | None:
        """``score(image).car_likeness`` without the SSIM and the output pictures, which it does not
        use and which cost more than the model itself at this size; None without calibration."""
        prepared = self.prepare(image)
        out = self.run(prepared.array[None])
        target = crop_box(prepared.array, prepared.box).astype(np.float64)
        mse = float(np.mean((target - crop_box(out.recon[0], prepared.box).astype(np.float64)) ** 2))
        return _car_likeness_of_box(
            target, mse, kl_divergence(out.mu[0], out.logvar[0]), out.logvar[0], self.calibration
        )


_cache: dict[tuple[str, int, int], Model] = {}
_cache_lock = threading.Lock()


def load_model(model_dir: str | os.PathLike = DEFAULT_MODEL_DIR, threads: int | None = None) -> Model:
    """The model in ``model_dir``, loaded once per process.

    Cached by (resolved directory, ``metadata.json`` modification time, threads): a re-export
    into the same directory is picked up on the next call. Threads default to 1 (or
    ``$CARSITE_ORT_THREADS``).
    """
    resolved = Path(model_dir).resolve()
    try:
        mtime = (resolved / METADATA_FILE).stat().st_mtime_ns
    except FileNotFoundError:
        raise FileNotFoundError(f"no exported model in {resolved} (missing {METADATA_FILE})") from None
    key = (str(resolved), mtime, _threads(threads))
    with _cache_lock:
        model = _cache.get(key)
        if model is None:
            # Drop older exports of this directory so a long-lived worker does not pile them up.
            for stale in [k for k in _cache if k[0] == key[0] and k[1] != key[1]]:
                del _cache[stale]
            model = _cache[key] = Model(resolved, threads=key[2])
        return model
