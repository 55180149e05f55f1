"""Which models may serve which pipeline stage: checked when a pipeline loads (the registry)
and by `edgefleet model check`, from the members' manifests alone."""

from __future__ import annotations

from server.manifest import DETECTION_KINDS, CascadeStage, ModelManifest, PipelineStage


def stage_problem(kind: str, member: ModelManifest, stage: PipelineStage | None = None) -> str:
    """Why `member` cannot serve a pipeline stage of `kind`, or ""."""
    post = member.postprocess.kind
    if member.pipeline is not None:
        return "is a pipeline itself"
    if kind in ("pyramid", "refine"):
        return cascade_problem(kind, member, stage.cascade if stage else CascadeStage())
    if member.preprocess is None:
        return "has no preprocess section, so it cannot take frames or crops"
    if kind == "detect" and post not in DETECTION_KINDS:
        return f"a detect stage needs a yolo or db_text postprocess, not {post}"
    if kind == "crop" and post not in ("ctc_text", "classification"):
        return f"a crop stage needs a ctc_text or classification postprocess, not {post}"
    return ""


def cascade_problem(kind: str, member: ModelManifest, stage: CascadeStage) -> str:
    """Why `member` cannot serve a `pyramid` or `refine` stage, or ""."""
    if len(member.inputs) != 1 or len(member.inputs[0].shape) != 4:
        return f"a {kind} stage needs one image input [N, 3, H, W]"
    _, channels, height, width = member.inputs[0].shape
    if channels != 3:
        return f"a {kind} stage needs 3 colour channels, not {channels}"
    if kind == "pyramid" and (isinstance(height, int) and height > 0 or isinstance(width, int)
                              and width > 0):  # fmt: skip
        return "a pyramid stage needs a fully convolutional model: dynamic height and width"
    if kind == "refine" and not (isinstance(height, int) and height > 0 and height == width):
        return "a refine stage needs a fixed square input size"
    names = {spec.name for spec in member.outputs}
    missing = [name for name in (stage.score_output, stage.offsets_output) if name not in names]
    if missing:
        return f"a {kind} stage reads outputs {', '.join(missing)}, which the model lacks"
    return ""
