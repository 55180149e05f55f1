"""Publish bundles to an HTTP origin: a plain directory of `<sha256>.efb` files that any web
server or CDN serves (nginx, S3, a CDN pull zone). Agents list it as a bundle source.

A published file appears atomically (written beside, then renamed), so a web server never serves
half a bundle; publishing the same bundle again is a no-op. Bundles are verified before they are
published, and agents verify digest and signature again on arrival: the origin is not trusted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from fleet.bundle import BUNDLE_SUFFIX, sha256_path, verify_bundle
from fleet.keys import TrustedKeys


def publish_bundle(bundle: Path, directory: Path, sha256: str | None = None) -> Path:
    """Place `bundle` in `directory` as `<sha256>.efb`; return its path there.

    `sha256` is the bundle's digest when the caller has already computed it.
    """
    digest = sha256 or sha256_path(bundle)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{digest}{BUNDLE_SUFFIX}"
    if target.is_file() and target.stat().st_size == bundle.stat().st_size:
        return target
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".publish-", suffix=".tmp")
    os.close(descriptor)
    try:
        shutil.copyfile(bundle, temporary)
        # Web servers run as another user: the origin is world-readable, like any web root.
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def verify_and_publish(bundle: Path, directory: Path, trusted: TrustedKeys) -> tuple[str, Path]:
    """Verify `bundle`'s signature against `trusted`, then publish it; (sha256, published path)."""
    verify_bundle(bundle, trusted)
    digest = sha256_path(bundle)
    return digest, publish_bundle(bundle, directory, digest)
