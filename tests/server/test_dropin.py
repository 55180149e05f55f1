"""Drop-in ONNX models, as in Triton: only model.onnx on disk, a manifest completed from it."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgefleet.cli import build_app
from server.app import EdgeServer
from server.manifest import read_manifest
from testkit.edge import server_settings
from testkit.repositories import BUILT_MODELS, ONNX_MODEL, ROOT

# ImageNet ids a correct classifier gives chelsea: tabby, tiger cat, Egyptian cat.
CAT_IDS = {281, 282, 285}


def drop_in(repo: Path, name: str = "plain_onnx") -> Path:
    version_dir = repo / name / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").hardlink_to(BUILT_MODELS / ONNX_MODEL / "1" / "model.onnx")
    return version_dir


# Triton's client as a child process.
@pytest.mark.system
async def test_a_bare_onnx_file_serves_through_tritonclient(tmp_path, built_models, caplog):
    repo = tmp_path / "repo"
    drop_in(repo)
    caplog.set_level(logging.INFO, logger="server.models.registry")
    server = EdgeServer(server_settings(repo))
    await server.start()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "testkit.programs.triton_dropin",
            f"127.0.0.1:{server.port}", "plain_onnx",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    finally:
        await server.stop(grace_s=1.0)
    assert process.returncode == 0, stderr.decode()[-3000:]
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    assert report["ready"]
    assert report["inputs"] == [["input", "FP32", [-1, 3, 224, 224]]]
    assert report["outputs"] == [["logits", "FP32", [-1, 1000]]]
    assert report["max_batch_size"] == 8  # every tensor starts with the dynamic "N"
    assert report["argmax"] in CAT_IDS and report["shape"] == [1, 1000]
    assert "completed from the model" in caplog.text
    assert not (repo / "plain_onnx" / "1" / "manifest.json").exists()  # nothing written


async def test_an_unreadable_drop_in_is_skipped_with_its_reason(tmp_path, built_models):
    repo = tmp_path / "repo"
    broken = repo / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    drop_in(repo)
    server = EdgeServer(server_settings(repo))
    await server.start()
    try:
        index = {entry.name: entry for entry in server.core.repository_index()}
        assert index["plain_onnx"].state == "READY"
        assert index["broken"].state == "UNAVAILABLE"
        assert "model.onnx is not a readable ONNX model" in index["broken"].reason
    finally:
        await server.stop(grace_s=1.0)


def test_model_init_writes_a_manifest_that_check_accepts(tmp_path, built_models):
    version_dir = drop_in(tmp_path / "repo")
    runner = CliRunner()
    app = build_app()
    labels = BUILT_MODELS / ONNX_MODEL / "1" / "labels.txt"
    result = runner.invoke(app, ["model", "init", str(version_dir), "--postprocess",
                                 "classification", "--labels", str(labels)])  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = read_manifest(version_dir)
    assert manifest.postprocess.kind == "classification"
    assert manifest.postprocess.output == "logits"
    assert set(manifest.files) == {"model.onnx", "labels.txt"}
    assert manifest.inputs[0].shape[1:] == [3, 224, 224]
    checked = runner.invoke(app, ["model", "check", str(version_dir)])
    assert checked.exit_code == 0, checked.output
    assert "ok plain_onnx/1" in checked.output
    again = runner.invoke(app, ["model", "init", str(version_dir)])
    assert again.exit_code == 2 and "exists" in again.output


def test_model_check_names_a_tampered_file(tmp_path, built_models):
    version_dir = drop_in(tmp_path / "repo")
    runner = CliRunner()
    app = build_app()
    labels = BUILT_MODELS / ONNX_MODEL / "1" / "labels.txt"
    assert (
        runner.invoke(app, ["model", "init", str(version_dir), "--labels", str(labels)]).exit_code
        == 0
    )
    (version_dir / "labels.txt").write_text("tampered\n")
    checked = runner.invoke(app, ["model", "check", str(version_dir), "--output", "json"])
    assert checked.exit_code == 1
    report = json.loads(checked.output)
    assert report["ok"] is False and "labels.txt sha256" in report["error"]


@pytest.mark.parametrize("member", ["ppocr_det", "ppocr_rec"])
def test_model_check_of_a_pipeline_names_a_missing_member(tmp_path, built_models, member):
    import shutil

    repo = tmp_path / "repo"
    for name in ("ppocr", "ppocr_det", "ppocr_rec"):
        if name != member:
            shutil.copytree(BUILT_MODELS / name, repo / name)
    checked = CliRunner().invoke(build_app(), ["model", "check", str(repo / "ppocr" / "1")])
    assert checked.exit_code == 1
    assert f"member model {member!r} is not in" in checked.output


async def test_a_bare_onnx_file_serves_over_http_json(tmp_path, built_models, preprocessed):
    import io

    import aiohttp
    import numpy as np

    repo = tmp_path / "repo"
    drop_in(repo)
    server = EdgeServer(server_settings(repo, http_port=0))
    await server.start()
    base = f"http://127.0.0.1:{server.http_port}/v2/models/plain_onnx"
    tensor = preprocessed("chelsea")
    body = {
        "inputs": [{"name": "input", "shape": list(tensor.shape), "datatype": "FP32",
                    "data": tensor.reshape(-1).tolist()}],
    }  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(base) as reply:
                metadata = await reply.json()
            payload = io.BytesIO(json.dumps(body).encode())
            async with session.post(f"{base}/infer", data=payload) as reply:
                assert reply.status == 200, await reply.text()
                answer = await reply.json()
    finally:
        await server.stop(grace_s=1.0)
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    (output,) = answer["outputs"]
    assert output["name"] == "logits" and output["shape"] == [1, 1000]
    assert int(np.argmax(output["data"])) in CAT_IDS
