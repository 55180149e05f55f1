"""Reduced-precision copies of an ONNX model, and the accuracy guard that admits them.

int8: static QDQ quantization (onnxruntime.quantization) calibrated on real frames. fp16: a
float16 graph with fp32 inputs and outputs. Either is compared with the fp32 model on the
calibration inputs (top-1 agreement for classifiers, relative error for raw outputs) and is
only ever served if it passes. Results are cached beside the model, keyed by the model's
sha256, the recipe, the onnxruntime version and the hardware fingerprint; a rejected
conversion keeps its verdict on disk but not its file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from server.hardware.calibration import CalibrationSet, Sample
from server.manifest import ModelManifest, sha256_file

logger = logging.getLogger(__name__)

CACHE_DIRNAME = ".edgefleet-cache"
# Bumped when the conversion recipe changes, so old cache entries are not reused.
RECIPE_VERSION = 2


@dataclass(frozen=True)
class GuardVerdict:
    precision: str
    metric: str  # "top1_agreement" or "relative_error"
    value: float
    samples: int
    calibration: str
    converted_sha256: str | None  # None once a rejected file is deleted
    convert_seconds: float
    # Where the candidate ran for the comparison (a GPU provider when the device has one).
    provider: str

    def passes(self, min_agreement: float, max_error: float) -> bool:
        if self.metric == "top1_agreement":
            return self.value >= min_agreement
        return self.value <= max_error

    def describe(self) -> str:
        where = f"on {self.samples} inputs, {self.provider}"
        if self.metric == "top1_agreement":
            return f"top-1 agreement with fp32 {self.value:.1%} {where}"
        return f"relative error vs fp32 {self.value:.4f} {where}"


@dataclass(frozen=True)
class Conversion:
    verdict: GuardVerdict
    accepted: bool
    # The converted file (absolute) when accepted.
    path: Path | None
    cached: bool


def cache_dir_for(version_dir: Path, cache_dir: Path | None) -> Path:
    """The configured cache, else `.edgefleet-cache` beside the model; a read-only repository
    (a mounted bundle, say) falls back to the temp directory, still keyed by sha256."""
    if cache_dir is not None:
        return cache_dir
    beside = version_dir / CACHE_DIRNAME
    try:
        beside.mkdir(exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / "edgefleet-cache"
    logger.info("%s is not writable; caching conversions in %s", beside, fallback)
    return fallback


def convert_with_guard(
    *,
    model_path: Path,
    model_sha256: str,
    manifest: ModelManifest,
    precision: str,
    calibration: CalibrationSet,
    cache_dir: Path,
    providers: tuple[str, ...],
    min_agreement: float,
    max_error: float,
    fingerprint: str,
) -> Conversion:
    """Convert `model_path` to `precision` (or reuse the cache) and judge it against fp32."""
    import onnxruntime

    cache_dir.mkdir(parents=True, exist_ok=True)
    # The verdict depends on the device's kernels (VNNI or not, GPU or CPU), so the device's
    # fingerprint is part of the key: a cache copied to another device is not trusted there.
    stem = (
        f"{model_sha256[:16]}-{precision}-r{RECIPE_VERSION}-ort{onnxruntime.__version__}"
        f"-{fingerprint}"
    )
    converted = cache_dir / f"{stem}.onnx"
    record = cache_dir / f"{stem}.json"

    verdict = _cached_verdict(record, converted)
    cached = verdict is not None
    if verdict is None:
        started = time.monotonic()
        tmp = converted.with_suffix(".tmp.onnx")
        if precision == "int8":
            _quantize_int8(model_path, tmp, calibration.samples)
        elif precision == "fp16":
            _convert_fp16(model_path, tmp)
        else:
            raise ValueError(f"no conversion to {precision}")
        tmp.replace(converted)
        seconds = time.monotonic() - started
        metric, value, provider = _compare(
            model_path, converted, manifest, calibration.samples, providers
        )
        verdict = GuardVerdict(
            precision=precision,
            metric=metric,
            value=value,
            samples=len(calibration.samples),
            calibration=calibration.source,
            converted_sha256=sha256_file(converted),
            convert_seconds=round(seconds, 2),
            provider=provider,
        )
    accepted = verdict.passes(min_agreement, max_error)
    if not accepted and converted.exists():
        # A model that fails the guard is never served, so it is not kept either.
        converted.unlink()
        verdict = GuardVerdict(**{**asdict(verdict), "converted_sha256": None})
    if not cached or not accepted:
        record.write_text(json.dumps(asdict(verdict), indent=2) + "\n", encoding="utf-8")
    logger.info(
        "%s/%s %s: %s -> %s%s",
        manifest.name,
        manifest.version,
        precision,
        verdict.describe(),
        "accepted" if accepted else "rejected",
        " (cached)" if cached else "",
    )
    return Conversion(
        verdict=verdict, accepted=accepted, path=converted if accepted else None, cached=cached
    )


def _cached_verdict(record: Path, converted: Path) -> GuardVerdict | None:
    """A stored verdict, if its file (when it passed) is still there and unchanged."""
    try:
        verdict = GuardVerdict(**json.loads(record.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    if verdict.converted_sha256 is None:
        return verdict  # rejected before: the verdict alone is the answer
    if converted.is_file() and sha256_file(converted) == verdict.converted_sha256:
        return verdict
    logger.warning("%s: cached conversion missing or changed; converting again", converted)
    return None


class _SampleReader:
    """onnxruntime.quantization's CalibrationDataReader protocol over our samples."""

    def __init__(self, samples: list[Sample]) -> None:
        self._iterator = iter(samples)

    def get_next(self) -> Sample | None:
        return next(self._iterator, None)


def _quantize_int8(source: Path, target: Path, samples: list[Sample]) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_suffix(".prep.onnx")
    try:
        # Shape inference and graph folding first, as onnxruntime recommends for static QDQ.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared),
            str(target),
            _SampleReader(samples),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        prepared.unlink(missing_ok=True)


def _convert_fp16(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    # Inputs and outputs stay fp32 so clients and preprocessing are unchanged.
    converted = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(target))


def _compare(
    reference_path: Path,
    candidate_path: Path,
    manifest: ModelManifest,
    samples: list[Sample],
    providers: tuple[str, ...],
) -> tuple[str, float, str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    offered = set(ort.get_available_providers())
    usable = [name for name in providers if name in offered] or ["CPUExecutionProvider"]
    reference = ort.InferenceSession(
        str(reference_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    candidate = ort.InferenceSession(str(candidate_path), sess_options=options, providers=usable)
    provider = candidate.get_providers()[0]
    post = manifest.postprocess
    names = [post.output] if post.kind == "classification" and post.output else None
    names = names or [spec.name for spec in manifest.outputs]
    expected = [reference.run(names, sample) for sample in samples]
    actual = [candidate.run(names, sample) for sample in samples]
    if post.kind == "classification":
        agree = [
            int(np.argmax(want[0].reshape(-1))) == int(np.argmax(got[0].reshape(-1)))
            for want, got in zip(expected, actual, strict=True)
        ]
        return "top1_agreement", float(np.mean(agree)), provider
    errors = []
    for want_all, got_all in zip(expected, actual, strict=True):
        for want, got in zip(want_all, got_all, strict=True):
            want64 = np.asarray(want, dtype=np.float64)
            diff = np.linalg.norm(want64 - np.asarray(got, dtype=np.float64))
            errors.append(float(diff / max(float(np.linalg.norm(want64)), 1e-12)))
    return "relative_error", max(errors), provider
