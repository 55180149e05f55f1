"""An exported entry is what the fleet ships: it packages, signs, verifies and installs as is."""

from __future__ import annotations

from pathlib import Path

from fleet.bundle import build_bundle, install_bundle
from fleet.keys import TrustedKeys, generate_keypair, load_private_key
from server.manifest import read_manifest, verify_files
from testkit.export import SAMPLES, export_cli


def test_exported_entry_packages_signs_and_installs(tmp_path: Path) -> None:
    repository = tmp_path / "export"
    result = export_cli(
        f"{SAMPLES}.control_flow:gated_recurrent_head", "--example-input", "N,L,4",
        "--name", "gru", "--repository", repository,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    private, public = generate_keypair(tmp_path / "keys", "release")
    trusted = TrustedKeys.from_paths([public])
    device_repository = tmp_path / "device"
    for name in ("gru", "gru_torchscript"):
        bundle = build_bundle(
            repository / name / "1", name, "3", load_private_key(private), tmp_path / "bundles"
        )
        install_bundle(bundle, trusted, device_repository, expect=(name, "3"))
        installed = device_repository / name / "3"
        manifest = read_manifest(installed)
        verify_files(installed, manifest)
        assert manifest.provenance["export"]["verification"] == "passed"
        assert (installed / "export_report.json").is_file()
