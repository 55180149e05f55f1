"""`edgefleet model init|check`: write the manifest of a drop-in ONNX model, validate one."""

from __future__ import annotations

import contextlib
import json
import shutil
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from server.manifest import ModelManifest

model_app = typer.Typer(help="Write and check model manifests.", no_args_is_help=True)


class PreprocessPreset(StrEnum):
    none = "none"
    # RGB, ImageNet mean/std on the 0..255 scale (torchvision classifiers).
    imagenet = "imagenet"
    # RGB scaled to 0..1 (YOLO exports).
    unit = "unit"


class PostprocessKind(StrEnum):
    raw = "raw"
    classification = "classification"
    yolo = "yolo"
    db_text = "db_text"
    ctc_text = "ctc_text"


class ResizeKind(StrEnum):
    stretch = "stretch"
    letterbox = "letterbox"
    limit_side = "limit_side"
    fit_height = "fit_height"


_PRESETS = {
    PreprocessPreset.imagenet: ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    PreprocessPreset.unit: ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
}


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")


@model_app.command("init")
def init(
    directory: Annotated[
        Path,
        typer.Argument(help="Version directory holding model.onnx: <repository>/<name>/<version>."),
    ],
    preprocess: Annotated[
        PreprocessPreset, typer.Option(help="How camera frames become the first input.")
    ] = PreprocessPreset.none,
    resize: Annotated[
        ResizeKind, typer.Option(help="Resize mode of the preprocess.")
    ] = ResizeKind.stretch,
    size: Annotated[
        str | None, typer.Option(help="HEIGHTxWIDTH when the input's are dynamic.")
    ] = None,
    postprocess: Annotated[
        PostprocessKind, typer.Option(help="How the output becomes a result.")
    ] = PostprocessKind.raw,
    output: Annotated[
        str | None, typer.Option(help="Output the postprocess reads (default: the first).")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Label file (one per line) to copy beside the model.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing manifest.")] = False,
) -> None:
    """Complete a manifest from model.onnx and write it for editing."""
    from server.errors import EdgeError
    from server.manifest import MANIFEST_FILENAME, Postprocess, Preprocess, write_manifest
    from server.models.dropin import DROPIN_FILENAME, manifest_from_onnx

    if (directory / MANIFEST_FILENAME).exists() and not force:
        raise typer.BadParameter(f"{directory / MANIFEST_FILENAME} exists (use --force)")
    if not (directory / DROPIN_FILENAME).is_file():
        raise typer.BadParameter(f"{directory} has no {DROPIN_FILENAME}")
    if labels is not None:
        if not labels.is_file():
            raise typer.BadParameter(f"{labels} does not exist")
        shutil.copyfile(labels, directory / "labels.txt")
    chosen = preprocess is not PreprocessPreset.none or postprocess is not PostprocessKind.raw
    try:
        probe = manifest_from_onnx(directory)
        if not chosen and labels is None:
            # No sections asked for: the manifest the server completes by itself, which for a
            # YOLO detector with metadata has its letterbox, decoder and class names.
            path = write_manifest(directory, probe)
            typer.echo(f"wrote {path} ({_summary(probe)})")
            return
        pre = None
        if preprocess is not PreprocessPreset.none:
            spec = probe.inputs[0]
            height, width = _size(size, spec.shape)
            mean, std = _PRESETS[preprocess]
            pre = Preprocess(
                input=spec.name, height=height, width=width, resize=resize.value, color="rgb",
                mean=mean, std=std, layout="nchw", dtype="float32",
            )  # fmt: skip
        # A yolo postprocess asked for by flag keeps what the model's metadata says (names,
        # layout, the exporter's thresholds) unless --labels replaces the names.
        known = probe.postprocess if probe.postprocess.kind == postprocess.value else None
        post = Postprocess(
            kind=postprocess.value,
            output=None if postprocess is PostprocessKind.raw else output or probe.outputs[0].name,
            labels_file="labels.txt" if labels is not None else None,
            labels=known.labels if known is not None and labels is None else None,
            yolo=known.yolo if known is not None else None,
        )
        manifest = manifest_from_onnx(directory, preprocess=pre, postprocess=post)
    except (EdgeError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    path = write_manifest(directory, manifest)
    typer.echo(f"wrote {path}")


def _summary(manifest: ModelManifest) -> str:
    post = manifest.postprocess
    if post.kind == "yolo" and manifest.preprocess is not None:
        pre = manifest.preprocess
        return (
            f"YOLO detector from its metadata: {pre.resize} {pre.height}x{pre.width}, "
            f"{len(post.labels or [])} classes"
        )
    return f"{post.kind} postprocess"


def _size(size: str | None, shape: list[int | str]) -> tuple[int, int]:
    if size:
        try:
            height, width = (int(part) for part in size.lower().split("x"))
        except ValueError:
            raise typer.BadParameter(f"--size {size!r} is not HEIGHTxWIDTH") from None
        return height, width
    dims = shape[-2:]
    if len(shape) != 4 or not all(isinstance(dim, int) and dim > 0 for dim in dims):
        raise typer.BadParameter(
            f"the input's shape {shape} has no fixed height and width: pass --size HxW"
        )
    return int(dims[0]), int(dims[1])


def _older_version(directory: Path) -> Path | None:
    """The newest numbered version directory beside `directory` and older than it."""
    if not directory.name.isdigit():
        return None
    older = [
        sibling
        for sibling in directory.parent.iterdir()
        if sibling.is_dir() and sibling.name.isdigit() and int(sibling.name) < int(directory.name)
    ]
    return max(older, key=lambda sibling: int(sibling.name)) if older else None


@model_app.command("check")
def check(
    directory: Annotated[
        Path, typer.Argument(help="Version directory: <repository>/<name>/<version>.")
    ],
    output: Annotated[str, typer.Option(help="text or json.")] = "text",
) -> None:
    """Validate a version directory: manifest, file hashes, a real load and warm-up run, a
    smoke test on a real photo (image models), and, when an older version is beside it, the
    check a hot swap makes: the same inputs and outputs, and camera frames if the older version
    takes them.

    A TorchScript model loads and runs in the same confined worker the server uses (uid
    nobody, Landlock, no sockets): checking a hostile model is as safe as serving it."""
    import asyncio

    from server.errors import EdgeError, IncompatibleVersion
    from server.models.compat import signature_problems, takes_frames
    from server.models.registry import check_pipeline_members, read_version_manifest
    from server.models.runtime_plan import ManifestPlanner
    from server.observability.metrics import ServerMetrics

    try:
        manifest = read_version_manifest(directory)
        older = _older_version(directory)
        previous = None
        if older is not None:
            with contextlib.suppress(EdgeError):  # an unreadable older version: nothing to match
                previous = read_version_manifest(older)
        if previous is not None:
            # Offline nobody knows whether streams are open: assume the older version's
            # cameras are, as a hot swap on a device streaming to it would.
            streams = 1 if takes_frames(previous) else 0
            problems = signature_problems(previous, manifest, camera_streams=streams)
            if problems:
                raise IncompatibleVersion(
                    f"version {manifest.version} cannot replace version {previous.version}: "
                    + "; ".join(problems)
                )
        if manifest.pipeline is not None:
            check_pipeline_members(directory.parent.parent, manifest)
            detail = f"pipeline of {len(manifest.pipeline.stages)} stages"
        else:
            from server.models.version import ModelVersion

            plan = ManifestPlanner().plan(directory, manifest)
            version = ModelVersion(directory, manifest, plan, ServerMetrics())
            try:
                version.smoke_test()
            finally:
                asyncio.run(version.retire())
            detail = version.backend_description
    except EdgeError as exc:
        if output == "json":
            typer.echo(json.dumps({"ok": False, "error": str(exc)}))
        else:
            typer.secho(f"FAIL {directory}: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    if output == "json":
        typer.echo(json.dumps({"ok": True, "name": manifest.name, "version": manifest.version}))
    else:
        typer.echo(f"ok {manifest.name}/{manifest.version}: {detail}")
