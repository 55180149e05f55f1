"""`edgefleet model init|check`: write the manifest of a drop-in ONNX model, validate one."""

from __future__ import annotations

import contextlib
import json
import shutil
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import click

from common.cli import OrderedGroup

if TYPE_CHECKING:
    from server.manifest import ModelManifest

model_app = OrderedGroup(help="Write and check model manifests.", no_args_is_help=True)


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


def register(app: click.Group) -> None:
    app.add_command(model_app, name="model")


@model_app.command("init")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--preprocess",
    type=click.Choice(PreprocessPreset),
    default=PreprocessPreset.none,
    help="How camera frames become the first input.",
)
@click.option(
    "--resize",
    type=click.Choice(ResizeKind),
    default=ResizeKind.stretch,
    help="Resize mode of the preprocess.",
)
@click.option("--size", default=None, help="HEIGHTxWIDTH when the input's are dynamic.")
@click.option(
    "--postprocess",
    type=click.Choice(PostprocessKind),
    default=PostprocessKind.raw,
    help="How the output becomes a result.",
)
@click.option("--output", default=None, help="Output the postprocess reads (default: the first).")
@click.option(
    "--labels",
    type=click.Path(path_type=Path),
    default=None,
    help="Label file (one per line) to copy beside the model.",
)
@click.option("--force/--no-force", default=False, help="Overwrite an existing manifest.")
def init(
    directory: Path,
    preprocess: PreprocessPreset,
    resize: ResizeKind,
    size: str | None,
    postprocess: PostprocessKind,
    output: str | None,
    labels: Path | None,
    force: bool,
) -> None:
    """Complete a manifest from model.onnx and write it for editing.

    DIRECTORY: the version directory holding model.onnx: <repository>/<name>/<version>."""
    from server.errors import EdgeError
    from server.manifest import MANIFEST_FILENAME, Postprocess, Preprocess, write_manifest
    from server.models.dropin import DROPIN_FILENAME, manifest_from_onnx

    if (directory / MANIFEST_FILENAME).exists() and not force:
        raise click.BadParameter(f"{directory / MANIFEST_FILENAME} exists (use --force)")
    if not (directory / DROPIN_FILENAME).is_file():
        raise click.BadParameter(f"{directory} has no {DROPIN_FILENAME}")
    if labels is not None:
        if not labels.is_file():
            raise click.BadParameter(f"{labels} does not exist")
        shutil.copyfile(labels, directory / "labels.txt")
    chosen = preprocess is not PreprocessPreset.none or postprocess is not PostprocessKind.raw
    try:
        probe = manifest_from_onnx(directory)
        if not chosen and labels is None:
            # No sections asked for: the manifest the server completes by itself, which for a
            # YOLO detector with metadata has its letterbox, decoder and class names.
            path = write_manifest(directory, probe)
            click.echo(f"wrote {path} ({_summary(probe)})")
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
        raise click.BadParameter(str(exc)) from None
    path = write_manifest(directory, manifest)
    click.echo(f"wrote {path}")


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
            raise click.BadParameter(f"--size {size!r} is not HEIGHTxWIDTH") from None
        return height, width
    dims = shape[-2:]
    if len(shape) != 4 or not all(isinstance(dim, int) and dim > 0 for dim in dims):
        raise click.BadParameter(
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
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--output", default="text", help="text or json.")
def check(
    directory: Path,
    output: str,
) -> None:
    """Validate a version directory: manifest, file hashes, a real load and warm-up run, a
    smoke test on a real photo (image models), and, when an older version is beside it, the
    check a hot swap makes: the same inputs and outputs, and camera frames if the older version
    takes them. DIRECTORY: the version directory, <repository>/<name>/<version>.

    A TorchScript model loads and runs in the same confined worker the server uses (uid
    nobody, Landlock, no sockets): checking a hostile model is as safe as serving it."""
    import asyncio

    from server.errors import EdgeError, IncompatibleVersion
    from server.models.compat import signature_problems, takes_frames
    from server.models.registry import check_pipeline_members, read_version_manifest
    from server.models.runtime_plan import ManifestPlanner
    from server.observability.metrics import ServerMetrics
    from server.settings import SandboxSettings

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
            sandbox = SandboxSettings()  # EDGEFLEET_SANDBOX_*, as the server reads them
            version = ModelVersion(directory, manifest, plan, ServerMetrics(), sandbox=sandbox)
            try:
                version.smoke_test()
            finally:
                asyncio.run(version.retire())
            detail = version.backend_description
    except EdgeError as exc:
        if output == "json":
            click.echo(json.dumps({"ok": False, "error": str(exc)}))
        else:
            click.secho(f"FAIL {directory}: {exc}", fg="red", err=True)
        raise click.exceptions.Exit(1) from None
    if output == "json":
        click.echo(json.dumps({"ok": True, "name": manifest.name, "version": manifest.version}))
    else:
        click.echo(f"ok {manifest.name}/{manifest.version}: {detail}")
