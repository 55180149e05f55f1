"""Signed, content-addressed model bundles.

A bundle is an uncompressed tar holding, in this order:
  bundle.json  {"format", "name", "version", "files": {path: {"sha256", "size"}}}
  bundle.sig   {"key_id", "signature"}: Ed25519 over the exact bytes of bundle.json
  files/<path> every file of the model version directory, manifest.json included
Its address is the sha256 of the whole tar. Verification trusts nothing before the signature
checks out and writes nothing outside a staging directory until every byte has been hashed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.errors import BundleRejected
from fleet.keys import TrustedKeys, key_id

BUNDLE_FORMAT = "edgefleet-bundle/1"
BUNDLE_SUFFIX = ".efb"
INDEX_NAME = "bundle.json"
SIGNATURE_NAME = "bundle.sig"
FILES_PREFIX = "files/"
MODEL_MANIFEST = "manifest.json"
# The index and signature are small; a huge one is an attack, not a bundle.
MAX_INDEX_BYTES = 1 << 20
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_BLOCK = 1 << 20


@dataclass(frozen=True)
class BundleInfo:
    name: str
    version: str
    # path -> (sha256, size)
    files: dict[str, tuple[str, int]]
    key_id: str


def sha256_path(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _safe_relative(path: str) -> str:
    """Return `path` if it stays inside its directory, else reject the bundle."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or "\\" in path or path != str(pure):
        raise BundleRejected(f"unsafe path {path!r} in bundle (path traversal)")
    return path


def build_bundle(
    model_dir: Path, name: str, version: str, private_key: Ed25519PrivateKey, out_dir: Path
) -> Path:
    """Package a model version directory as a signed bundle named by its sha256; return the path.

    The bundled manifest.json is rewritten to say `name` and `version`, so one exported model
    directory can ship as any version.
    """
    if not _NAME_PATTERN.match(name):
        raise ValueError(f"model name {name!r} must match {_NAME_PATTERN.pattern}")
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"version {version!r} must be a positive integer")
    manifest_path = model_dir / MODEL_MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{model_dir} has no {MODEL_MANIFEST}")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for relative, expected in manifest.get("files", {}).items():
        if sha256_path(model_dir / _safe_relative(relative)) != expected:
            raise ValueError(f"{model_dir / relative} does not match its manifest sha256")
    manifest["name"], manifest["version"] = name, version
    manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode()

    contents: dict[str, Path | bytes] = {MODEL_MANIFEST: manifest_bytes}
    # Exactly the files the manifest vouches for: local caches beside them (the planner's
    # .edgefleet-cache, say) belong to this device and never ship.
    for relative in sorted(manifest.get("files", {})):
        contents[relative] = model_dir / _safe_relative(relative)
    files: dict[str, dict[str, Any]] = {}
    for relative, source in contents.items():
        data_hash = (
            hashlib.sha256(source).hexdigest() if isinstance(source, bytes) else sha256_path(source)
        )
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        files[relative] = {"sha256": data_hash, "size": size}
    index = {"format": BUNDLE_FORMAT, "name": name, "version": version, "files": files}
    index_bytes = json.dumps(index, sort_keys=True).encode()
    signature = {
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(index_bytes)).decode(),
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out_dir, suffix=".partial", delete=False) as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, INDEX_NAME, index_bytes)
            _add_bytes(tar, SIGNATURE_NAME, json.dumps(signature).encode())
            for relative, source in contents.items():
                if isinstance(source, bytes):
                    _add_bytes(tar, FILES_PREFIX + relative, source)
                else:
                    info = tar.gettarinfo(str(source), arcname=FILES_PREFIX + relative)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.mtime = 0
                    with source.open("rb") as file:
                        tar.addfile(info, file)
        temporary = Path(handle.name)
    digest = sha256_path(temporary)
    final = out_dir / f"{name}-{version}-{digest[:12]}{BUNDLE_SUFFIX}"
    temporary.replace(final)
    return final


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise BundleRejected(f"not a readable bundle (truncated or corrupt): {exc}") from None


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if not member.isreg() or member.size > MAX_INDEX_BYTES:
        raise BundleRejected(f"{member.name} is not a small regular file")
    handle = tar.extractfile(member)
    if handle is None:
        raise BundleRejected(f"{member.name} is unreadable")
    data = handle.read()
    if len(data) != member.size:
        raise BundleRejected(f"{member.name} is truncated")
    return data


def _check_index(
    index_bytes: bytes, signature_bytes: bytes | None, trusted: TrustedKeys
) -> BundleInfo:
    if signature_bytes is None:
        raise BundleRejected("bundle is unsigned")
    try:
        signature = json.loads(signature_bytes)
        signer = str(signature["key_id"])
        raw_signature = base64.b64decode(signature["signature"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise BundleRejected("bundle signature is malformed") from None
    public_key = trusted.by_id.get(signer)
    if public_key is None:
        raise BundleRejected(f"bundle is signed by key {signer}, which is not trusted here")
    try:
        public_key.verify(raw_signature, index_bytes)
    except InvalidSignature:
        raise BundleRejected("bundle signature does not match its index (tampered)") from None
    try:
        index = json.loads(index_bytes)
        if index["format"] != BUNDLE_FORMAT:
            raise BundleRejected(f"unknown bundle format {index['format']!r}")
        name, version = str(index["name"]), str(index["version"])
        files = {
            _safe_relative(str(path)): (str(entry["sha256"]), int(entry["size"]))
            for path, entry in index["files"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BundleRejected("bundle index is malformed") from None
    if not _NAME_PATTERN.match(name) or not version.isdigit():
        raise BundleRejected(f"bundle names an unsafe model {name!r} version {version!r}")
    if MODEL_MANIFEST not in files:
        raise BundleRejected(f"bundle has no {MODEL_MANIFEST}")
    return BundleInfo(name=name, version=version, files=files, key_id=signer)


def _walk(path: Path, trusted: TrustedKeys) -> Iterator[tuple[BundleInfo, str, IO[bytes], int]]:
    """Verify the header, then yield (info, relative path, stream, size) per payload file.

    The caller must consume each stream before advancing; `_finish` checks completeness.
    """
    with _open(path) as tar:
        try:
            members = iter(tar)
            first = next(members, None)
            if first is None or first.name != INDEX_NAME:
                raise BundleRejected(f"bundle does not start with {INDEX_NAME}")
            index_bytes = _read_small(tar, first)
            second = next(members, None)
            signature_bytes = None
            pending: tarfile.TarInfo | None = second
            if second is not None and second.name == SIGNATURE_NAME:
                signature_bytes = _read_small(tar, second)
                pending = None
            info = _check_index(index_bytes, signature_bytes, trusted)
            seen: set[str] = set()
            for member in _chain(pending, members):
                if not member.name.startswith(FILES_PREFIX):
                    raise BundleRejected(f"unexpected member {member.name!r} in bundle")
                relative = _safe_relative(member.name[len(FILES_PREFIX) :])
                if not member.isreg():
                    raise BundleRejected(f"{relative!r} is not a regular file (link or device)")
                if relative not in info.files:
                    raise BundleRejected(f"{relative!r} is not listed in the signed index")
                if relative in seen:
                    raise BundleRejected(f"{relative!r} appears twice")
                seen.add(relative)
                stream = tar.extractfile(member)
                if stream is None:
                    raise BundleRejected(f"{relative!r} is unreadable")
                yield info, relative, stream, member.size
            missing = sorted(set(info.files) - seen)
            if missing:
                raise BundleRejected(f"bundle is missing {', '.join(missing)} (truncated)")
        except tarfile.TarError as exc:
            raise BundleRejected(f"bundle is truncated or corrupt: {exc}") from None


def _chain(
    first: tarfile.TarInfo | None, rest: Iterator[tarfile.TarInfo]
) -> Iterator[tarfile.TarInfo]:
    if first is not None:
        yield first
    yield from rest


def _copy_hashed(stream: IO[bytes], sink: IO[bytes] | None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    try:
        for block in iter(lambda: stream.read(_BLOCK), b""):
            digest.update(block)
            size += len(block)
            if sink is not None:
                sink.write(block)
    except (tarfile.TarError, OSError) as exc:
        raise BundleRejected(f"bundle is truncated or corrupt: {exc}") from None
    return digest.hexdigest(), size


def _check_file(info: BundleInfo, relative: str, digest: str, size: int) -> None:
    expected_digest, expected_size = info.files[relative]
    if size != expected_size:
        raise BundleRejected(
            f"{relative} has {size} bytes, the index says {expected_size} (truncated)"
        )
    if digest != expected_digest:
        raise BundleRejected(f"{relative} sha256 does not match the signed index (tampered)")


def verify_bundle(path: Path, trusted: TrustedKeys) -> BundleInfo:
    """Check signature, paths, sizes and hashes without writing anything; return the index."""
    result: BundleInfo | None = None
    for info, relative, stream, _size in _walk(path, trusted):
        digest, size = _copy_hashed(stream, None)
        _check_file(info, relative, digest, size)
        result = info
    if result is None:
        raise BundleRejected("bundle holds no files")
    return result


def install_bundle(
    path: Path, trusted: TrustedKeys, repository: Path, expect: tuple[str, str] | None = None
) -> BundleInfo:
    """Verify and unpack into `<repository>/<name>/<version>/`, atomically.

    Files go to a staging directory beside the version first; only a bundle whose every file
    checked out is renamed into place. An existing version directory is left untouched.
    `expect` (name, version) rejects a bundle that holds some other model or version.
    """
    staging: Path | None = None
    try:
        result: BundleInfo | None = None
        for info, relative, stream, _size in _walk(path, trusted):
            if staging is None:
                if expect is not None and (info.name, info.version) != expect:
                    raise BundleRejected(
                        f"bundle holds {info.name}/{info.version}, expected {expect[0]}/{expect[1]}"
                    )
                # Inside the model's directory (same filesystem, so the rename is atomic) under a
                # name that is not a version number, so the server never takes it for one.
                model_dir = repository / info.name
                model_dir.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as sink:
                digest, size = _copy_hashed(stream, sink)
            _check_file(info, relative, digest, size)
            result = info
        if result is None or staging is None:
            raise BundleRejected("bundle holds no files")
        destination = repository / result.name / result.version
        if destination.exists():
            raise FileExistsError(f"{destination} already exists")
        staging.rename(destination)
        staging = None
        return result
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
