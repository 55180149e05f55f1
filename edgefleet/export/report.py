"""The export report: which method and why, per-target verification, runtime cost.

Saved as `export_report.json` beside each written model, summarised in the manifest's
`provenance.export`, and printed by the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgefleet.export.benchmark import BenchResult
from edgefleet.export.verify import TargetVerification, Tolerance

REPORT_FILE = "export_report.json"


@dataclass(frozen=True)
class TargetOutcome:
    target: str
    # "<name>/<version>" in the repository.
    entry: str
    verification: TargetVerification | None
    written: bool
    # Why the target has no model at all (exporter refused), or why it was not written.
    error: str | None = None

    @property
    def verified(self) -> bool:
        return self.verification is not None and self.verification.passed

    def to_dict(self) -> dict[str, Any]:
        verification = self.verification
        return {
            "target": self.target,
            "entry": self.entry,
            "written": self.written,
            "verified": self.verified,
            "error": self.error,
            "examples": [
                {
                    "example": example.example,
                    "input_shapes": example.input_shapes,
                    "passed": example.passed,
                    "error": example.error,
                    "outputs": [
                        {
                            "output": check.output,
                            "max_abs_diff": check.max_abs_diff,
                            "max_rel_diff": check.max_rel_diff,
                            "top1_agreement": check.top1_agreement,
                            "passed": check.passed,
                            "problem": check.problem,
                        }
                        for check in example.outputs
                    ],
                }
                for example in (verification.examples if verification else [])
            ],
        }


@dataclass(frozen=True)
class ExportReport:
    factory: str
    method: str
    reason: str
    trace_findings: list[str]
    script_error: str | None
    tolerance: Tolerance
    forced: bool
    targets: list[TargetOutcome]
    benchmark: list[BenchResult] = field(default_factory=list)
    device: dict[str, Any] | None = None

    @property
    def succeeded(self) -> bool:
        """Every requested target was written and passed verification."""
        return all(outcome.written and outcome.verified for outcome in self.targets)

    def failures(self) -> list[str]:
        lines = []
        for outcome in self.targets:
            if outcome.error:
                lines.append(f"{outcome.target}: {outcome.error}")
            elif not outcome.verified:
                state = "written anyway (--force)" if outcome.written else "not written"
                detail = outcome.verification.first_failure() if outcome.verification else None
                lines.append(f"{outcome.target}: verification failed ({detail}); {state}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "factory": self.factory,
            "method": self.method,
            "reason": self.reason,
            "trace_findings": self.trace_findings,
            "script_error": self.script_error,
            "tolerance": {
                "atol": self.tolerance.atol,
                "rtol": self.tolerance.rtol,
                "min_top1": self.tolerance.min_top1,
            },
            "forced": self.forced,
            "succeeded": self.succeeded,
            "targets": [outcome.to_dict() for outcome in self.targets],
            "benchmark": [result.to_dict() for result in self.benchmark],
            "device": self.device,
        }

    def provenance(self, target: str) -> dict[str, Any]:
        """The manifest's `provenance.export`: enough for the planner and an auditor.

        `benchmark` rows are {runtime: eager|torchscript|onnx, batch, p50_ms, p95_ms,
        items_per_s, calls}, measured on `device` (cpu, cores_available, threads, versions)."""
        outcome = next(item for item in self.targets if item.target == target)
        failure = None
        if not outcome.verified and outcome.verification is not None:
            failure = outcome.verification.first_failure()
        return {
            "tool": "edgefleet export",
            "factory": self.factory,
            "method": self.method,
            "reason": self.reason,
            "verification": "passed" if outcome.verified else "failed",
            "forced": self.forced and not outcome.verified,
            "failure": failure,
            "report": REPORT_FILE,
            "benchmark": [result.to_dict() for result in self.benchmark],
            "device": self.device,
        }
