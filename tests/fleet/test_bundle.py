"""Signed bundles: a good one installs; every way of breaking one is rejected before install."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from fleet.bundle import build_bundle, install_bundle, verify_bundle
from fleet.errors import BundleRejected
from fleet.keys import TrustedKeys, generate_keypair, key_id, load_private_key
from server.manifest import read_manifest, verify_files
from testkit.fleet_models import build_model_dir


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    release_key, release_pub = generate_keypair(tmp_path / "keys", "release")
    rogue_key, _ = generate_keypair(tmp_path / "rogue", "rogue")
    return {"release": release_key, "release_pub": release_pub, "rogue": rogue_key}


@pytest.fixture
def bundle(tmp_path: Path, keys: dict[str, Path]) -> Path:
    model_dir = build_model_dir(tmp_path / "src", "tiny", "1")
    return build_bundle(model_dir, "tiny", "7", load_private_key(keys["release"]), tmp_path)


def _trusted(keys: dict[str, Path]) -> TrustedKeys:
    return TrustedKeys.from_paths([keys["release_pub"]])


def _rewrite(source: Path, target: Path, edit) -> Path:
    """Copy a bundle member by member, letting `edit(name, data)` change or drop members."""
    with tarfile.open(source) as original, tarfile.open(target, "w") as copy:
        for member in original:
            data = original.extractfile(member).read()  # type: ignore[union-attr]
            for name, payload in edit(member.name, data):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                copy.addfile(info, io.BytesIO(payload))
    return target


def test_good_bundle_installs_as_the_requested_version(tmp_path, bundle, keys):
    repository = tmp_path / "repo"
    info = install_bundle(bundle, _trusted(keys), repository)
    assert (info.name, info.version) == ("tiny", "7")
    manifest = read_manifest(repository / "tiny" / "7")
    verify_files(repository / "tiny" / "7", manifest)
    assert manifest.version == "7"
    assert not list(repository.rglob(".staging*"))


def test_keys_rotate_a_device_trusting_both_accepts_either(tmp_path, keys):
    model_dir = build_model_dir(tmp_path / "src", "tiny", "1")
    _, rogue_pub = keys["rogue"], keys["rogue"].with_suffix(".pub")
    signed_by_new = build_bundle(model_dir, "tiny", "2", load_private_key(keys["rogue"]), tmp_path)
    both = TrustedKeys.from_paths([keys["release_pub"], rogue_pub])
    assert verify_bundle(signed_by_new, both).version == "2"


def _assert_rejected(path: Path, keys, match: str, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    with pytest.raises(BundleRejected, match=match):
        install_bundle(path, _trusted(keys), repository)
    assert not any(repository.rglob("*.onnx")), "a rejected bundle left files behind"
    assert not list(repository.rglob(".staging*"))


def test_unsigned_bundle_is_rejected(tmp_path, bundle, keys):
    unsigned = _rewrite(
        bundle, tmp_path / "unsigned.efb", lambda n, d: [] if n == "bundle.sig" else [(n, d)]
    )
    _assert_rejected(unsigned, keys, "unsigned", tmp_path)


def test_wrong_key_bundle_is_rejected(tmp_path, keys):
    model_dir = build_model_dir(tmp_path / "src", "tiny", "1")
    rogue = build_bundle(model_dir, "tiny", "2", load_private_key(keys["rogue"]), tmp_path)
    _assert_rejected(rogue, keys, "not trusted", tmp_path)


def test_tampered_model_file_is_rejected(tmp_path, bundle, keys):
    def flip(name, data):
        if name == "files/model.onnx":
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        return [(name, data)]

    _assert_rejected(_rewrite(bundle, tmp_path / "t.efb", flip), keys, "tampered", tmp_path)


def test_tampered_index_is_rejected(tmp_path, bundle, keys):
    def bump(name, data):
        if name == "bundle.json":
            index = json.loads(data)
            index["version"] = "8"
            data = json.dumps(index, sort_keys=True).encode()
        return [(name, data)]

    _assert_rejected(_rewrite(bundle, tmp_path / "t.efb", bump), keys, "tampered", tmp_path)


# The tar ends in up to 11 KiB of zero padding; cutting into it is not truncation.
@pytest.mark.parametrize("keep", [0.3, 0.9, -16384])
def test_truncated_bundle_is_rejected(tmp_path, bundle, keys, keep):
    data = bundle.read_bytes()
    truncated = tmp_path / "truncated.efb"
    cut = int(len(data) * keep) if keep > 0 else len(data) + keep
    truncated.write_bytes(data[:cut])
    _assert_rejected(truncated, keys, "truncated|corrupt|missing", tmp_path)


def _resign(index_bytes: bytes, key_path: Path) -> bytes:
    key = load_private_key(key_path)
    signature = base64.b64encode(key.sign(index_bytes)).decode()
    return json.dumps({"key_id": key_id(key.public_key()), "signature": signature}).encode()


@pytest.mark.parametrize("evil_path", ["../../escaped.txt", "/tmp/escaped.txt", "a/../../x"])
def test_path_traversal_is_rejected_even_when_signed(tmp_path, bundle, keys, evil_path):
    # A compromised build pipeline signs whatever it is given: paths are checked regardless.
    payload = b"owned"
    state = {}

    def inject(name, data):
        if name == "bundle.json":
            index = json.loads(data)
            index["files"][evil_path] = {"sha256": hashlib.sha256(payload).hexdigest(), "size": 5}
            state["index"] = json.dumps(index, sort_keys=True).encode()
            return [(name, state["index"])]
        if name == "bundle.sig":
            return [
                (name, _resign(state["index"], keys["release"])),
                ("files/" + evil_path, payload),
            ]
        return [(name, data)]

    evil = _rewrite(bundle, tmp_path / "evil.efb", inject)
    _assert_rejected(evil, keys, "path traversal", tmp_path)
    assert not (tmp_path / "escaped.txt").exists()


def test_member_outside_the_signed_index_is_rejected(tmp_path, bundle, keys):
    def smuggle(name, data):
        extra = [("files/../../escaped.txt", b"owned")] if name == "bundle.sig" else []
        return [(name, data), *extra]

    _assert_rejected(
        _rewrite(bundle, tmp_path / "s.efb", smuggle), keys, "path traversal", tmp_path
    )


def test_symlink_member_is_rejected(tmp_path, bundle, keys):
    linked = tmp_path / "link.efb"
    with tarfile.open(bundle) as original, tarfile.open(linked, "w") as copy:
        for member in original:
            if member.name == "files/model.onnx":
                member = tarfile.TarInfo(member.name)
                member.type = tarfile.SYMTYPE
                member.linkname = "/etc/passwd"
                copy.addfile(member)
            else:
                copy.addfile(member, original.extractfile(member))
    _assert_rejected(linked, keys, "not a regular file", tmp_path)


def test_existing_version_is_never_overwritten(tmp_path, bundle, keys):
    repository = tmp_path / "repo"
    install_bundle(bundle, _trusted(keys), repository)
    with pytest.raises(FileExistsError):
        install_bundle(bundle, _trusted(keys), repository)


def test_only_manifest_files_ship_not_local_caches(tmp_path, keys):
    model_dir = build_model_dir(tmp_path / "src", "tiny", "1")
    cache = model_dir / ".edgefleet-cache"
    cache.mkdir()
    (cache / "int8-verdict.json").write_text('{"accepted": true}')
    built = build_bundle(model_dir, "tiny", "2", load_private_key(keys["release"]), tmp_path)
    with tarfile.open(built) as tar:
        names = tar.getnames()
    assert not [name for name in names if ".edgefleet-cache" in name]
    installed = tmp_path / "repo"
    install_bundle(built, _trusted(keys), installed)
    assert not (installed / "tiny" / "2" / ".edgefleet-cache").exists()
