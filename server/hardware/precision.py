"""Reduced-precision copies of an ONNX model, and the accuracy guard that admits them.

int8: static quantization (onnxruntime.quantization) calibrated on real frames, by one of a few
recipes; fp16: a float16 graph with fp32 inputs and outputs. The candidate is judged against
the fp32 model on evaluation inputs it was not calibrated on (`server.hardware.guard` has the
metrics) and is only ever served if it passes.

Results are cached in the planner's own directory (`server.hardware.trust`), keyed by the
model's sha256, the recipe, the onnxruntime version and the hardware fingerprint, and each
verdict is signed with the device key: a verdict this device did not write is ignored and the
conversion is done again. A rejected conversion keeps its verdict but not its file.

Only the conversion child (`server.hardware.convert_job`) calls `convert_with_guard`; the
serving process reads verdicts with `cached_conversion`, which imports no conversion tooling.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from server.hardware import guard, trust
from server.hardware.calibration import GuardInputs, Sample
from server.manifest import ModelManifest, sha256_file

logger = logging.getLogger(__name__)

# Bumped when a conversion recipe or the guard's inputs change, so old entries are not reused.
RECIPE_VERSION = 3


@dataclass(frozen=True)
class Recipe:
    name: str
    quant_format: str = "QDQ"  # or "QOperator"
    per_channel: bool = True
    # Keep the first convolution and the classifier in fp32 (where int8 hurts most).
    fp32_ends: bool = False
    weight_bits: int = 8
    description: str = ""


RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe("qdq", description="QDQ, per-channel int8 weights, MinMax calibration"),
        Recipe(
            "qdq-fp32-ends",
            fp32_ends=True,
            description="QDQ, per-channel int8 weights, first conv and classifier in fp32",
        ),
        Recipe("qoperator", quant_format="QOperator", description="QOperator, per-channel"),
        # Deliberately broken: 4-bit weights with one scale per tensor. Tests and benchmarks
        # use it to show the guard rejects a bad quantisation; the planner never picks it.
        Recipe(
            "int4-per-tensor",
            per_channel=False,
            weight_bits=4,
            description="deliberately broken: 4-bit weights, one scale per tensor",
        ),
    )
}
DEFAULT_RECIPE = "qdq-fp32-ends"


@dataclass(frozen=True)
class GuardVerdict:
    precision: str
    recipe: str
    metrics: dict[str, float]
    calibration: str
    evaluation: str
    source_sha256: str
    converted_sha256: str | None  # None once a rejected file is deleted
    convert_seconds: float
    # Where the candidate ran for the comparison (a GPU provider when the device has one).
    provider: str
    # Speed of one batch-1 run, fp32 and candidate, measured in the same child (ms).
    speed_ms: dict[str, float] = field(default_factory=dict)

    def checks(self, thresholds: guard.GuardThresholds) -> list[guard.Check]:
        return guard.checks_for(self.metrics, thresholds)

    def passes(self, thresholds: guard.GuardThresholds) -> bool:
        return all(check.passed for check in self.checks(thresholds) if check.gating)

    def describe(self, thresholds: guard.GuardThresholds) -> str:
        checks = "; ".join(check.describe() for check in self.checks(thresholds))
        note = guard.confident_note(self.metrics, thresholds)
        return (
            f"{checks} [{self.evaluation}{', ' + note if note else ''}; "
            f"calibrated on {self.calibration}; recipe {self.recipe}; {self.provider}]"
        )


@dataclass(frozen=True)
class Conversion:
    verdict: GuardVerdict
    accepted: bool
    # The converted file (absolute) when accepted.
    path: Path | None
    cached: bool


def cache_stem(model_sha256: str, precision: str, recipe: str, fingerprint: str) -> str:
    import onnxruntime

    # The verdict depends on the device's kernels (VNNI or not, GPU or CPU), so the device's
    # fingerprint is part of the key.
    tag = "" if precision != "int8" else f"-{recipe}"
    return (
        f"{model_sha256[:16]}-{precision}{tag}-r{RECIPE_VERSION}-ort{onnxruntime.__version__}"
        f"-{fingerprint}"
    )


def cached_conversion(
    *,
    model_sha256: str,
    precision: str,
    recipe: str,
    cache_dir: Path,
    key: bytes,
    thresholds: guard.GuardThresholds,
    fingerprint: str,
) -> Conversion | None:
    """A verdict this device signed for this model, with its file if it passed; else None."""
    stem = cache_stem(model_sha256, precision, recipe, fingerprint)
    converted = cache_dir / f"{stem}.onnx"
    record = cache_dir / f"{stem}.json"
    try:
        payload: dict[str, Any] = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not trust.verified(payload, key):
        logger.warning(
            "%s: verdict not signed by this device; it is ignored and converted again",
            record.name,
        )
        return None
    try:
        verdict = GuardVerdict(**{k: v for k, v in payload.items() if k != "mac"})
    except TypeError:
        return None
    if verdict.source_sha256 != model_sha256:
        return None
    accepted = verdict.passes(thresholds)
    if verdict.converted_sha256 is None:
        # Rejected before (its file deleted): the verdict alone is the answer, unless the
        # thresholds changed so far that it would pass now; then it has to be converted again.
        return None if accepted else Conversion(verdict, False, None, cached=True)
    if not converted.is_file() or sha256_file(converted) != verdict.converted_sha256:
        logger.warning("%s: cached conversion missing or changed; converting again", stem)
        return None
    return Conversion(verdict, accepted, converted if accepted else None, cached=True)


def convert_with_guard(
    *,
    model_path: Path,
    model_sha256: str,
    manifest: ModelManifest,
    precision: str,
    inputs: GuardInputs,
    cache_dir: Path,
    key: bytes,
    providers: tuple[str, ...],
    thresholds: guard.GuardThresholds,
    fingerprint: str,
    recipe: str = DEFAULT_RECIPE,
) -> Conversion:
    """Convert `model_path` to `precision` (or reuse this device's cache), judge it on the
    evaluation inputs, sign and store the verdict."""
    found = cached_conversion(
        model_sha256=model_sha256,
        precision=precision,
        recipe=recipe,
        cache_dir=cache_dir,
        key=key,
        thresholds=thresholds,
        fingerprint=fingerprint,
    )
    if found is not None:
        return found
    if sha256_file(model_path) != model_sha256:
        raise ValueError(f"{model_path.name} does not match its manifest sha256")
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = cache_stem(model_sha256, precision, recipe, fingerprint)
    converted = cache_dir / f"{stem}.onnx"
    record = cache_dir / f"{stem}.json"
    started = time.monotonic()
    tmp = converted.with_suffix(".tmp.onnx")
    if precision == "int8":
        quantize_int8(model_path, tmp, inputs.calibration.samples, RECIPES[recipe])
    elif precision == "fp16":
        _convert_fp16(model_path, tmp)
    else:
        raise ValueError(f"no conversion to {precision}")
    tmp.replace(converted)
    seconds = time.monotonic() - started
    metrics, provider, speed = evaluate(
        model_path, converted, manifest, inputs.evaluation.samples, providers, thresholds
    )
    verdict = GuardVerdict(
        precision=precision,
        recipe=recipe if precision == "int8" else precision,
        metrics=metrics,
        calibration=inputs.calibration.source,
        evaluation=inputs.evaluation.source,
        source_sha256=model_sha256,
        converted_sha256=sha256_file(converted),
        convert_seconds=round(seconds, 2),
        provider=provider,
        speed_ms=speed,
    )
    accepted = verdict.passes(thresholds)
    if not accepted:
        # A model that fails the guard is never served, so it is not kept either.
        converted.unlink()
        verdict = GuardVerdict(**{**asdict(verdict), "converted_sha256": None})
    record.write_text(
        json.dumps(trust.sign(asdict(verdict), key), indent=2) + "\n", encoding="utf-8"
    )
    logger.info(
        "%s/%s %s: %s -> %s",
        manifest.name,
        manifest.version,
        precision,
        verdict.describe(thresholds),
        "accepted" if accepted else "rejected",
    )
    return Conversion(
        verdict=verdict, accepted=accepted, path=converted if accepted else None, cached=False
    )


class _SampleReader:
    """onnxruntime.quantization's CalibrationDataReader protocol over our samples."""

    def __init__(self, samples: list[Sample]) -> None:
        self._iterator = iter(samples)

    def get_next(self) -> Sample | None:
        return next(self._iterator, None)


def quantize_int8(source: Path, target: Path, samples: list[Sample], recipe: Recipe) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # onnxruntime's calibration logs one INFO line per tensor it widens.
    logging.getLogger("root").setLevel(logging.WARNING)
    prepared = target.with_suffix(".prep.onnx")
    try:
        # Shape inference and graph folding first, as onnxruntime recommends for static QDQ.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        excluded: list[str] = []
        if recipe.fp32_ends:
            graph = onnx.load(str(prepared), load_external_data=False).graph
            convs = [node.name for node in graph.node if node.op_type == "Conv"]
            heads = [node.name for node in graph.node if node.op_type in ("Gemm", "MatMul")]
            excluded = [*convs[:1], *heads[-1:]]
        extra: dict[str, Any] = {}
        if recipe.weight_bits == 4:
            extra["WeightSymmetric"] = True
        quantize_static(
            str(prepared),
            str(target),
            _SampleReader(samples),
            quant_format=QuantFormat.QDQ if recipe.quant_format == "QDQ" else QuantFormat.QOperator,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt4 if recipe.weight_bits == 4 else QuantType.QInt8,
            per_channel=recipe.per_channel,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=excluded,
            extra_options=extra,
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


def evaluate(
    reference_path: Path,
    candidate_path: Path,
    manifest: ModelManifest,
    samples: list[Sample],
    providers: tuple[str, ...],
    thresholds: guard.GuardThresholds,
) -> tuple[dict[str, float], str, dict[str, float]]:
    """The guard's metrics on `samples`, where the candidate ran, and batch-1 ms of each."""
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
    expected, actual = [], []
    reference_s = candidate_s = 0.0
    for sample in samples:
        started = time.perf_counter()
        expected.append(reference.run(names, sample))
        middle = time.perf_counter()
        actual.append(candidate.run(names, sample))
        reference_s += middle - started
        candidate_s += time.perf_counter() - middle
    speed = {
        "fp32": round(1000 * reference_s / len(samples), 3),
        "candidate": round(1000 * candidate_s / len(samples), 3),
    }
    if post.kind == "classification":
        want = np.concatenate([out[0].reshape(1, -1) for out in expected])
        got = np.concatenate([out[0].reshape(1, -1) for out in actual])
        return guard.classifier_metrics(want, got, thresholds.confident_score), provider, speed
    return guard.raw_metrics(expected, actual), provider, speed
