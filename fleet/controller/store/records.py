"""What the controller keeps: plain records, serialised as JSON by the store."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    # NaN (a figure nobody measured) must survive a JSON round trip.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class DeviceRecord(_Record):
    device_id: str
    labels: dict[str, str] = Field(default_factory=dict)
    enrolled_at: float
    hardware_json: str = "{}"
    agent_version: str = ""
    # Last installed-model report: name -> active version.
    active_versions: dict[str, str] = Field(default_factory=dict)
    last_seen: float = 0.0
    # SHA-256 of the device's public key (SubjectPublicKeyInfo): removing the device revokes it.
    public_key_sha256: str = ""


class Revocation(_Record):
    """A revoked device key: no certificate for it is accepted and it cannot enroll again."""

    public_key_sha256: str
    device_id: str
    revoked_at: float
    actor: str = ""


# The desired-state source of an operator's pin: rollouts never overwrite it.
PIN_SOURCE = "pin"


class DesiredEntry(_Record):
    device_id: str
    model: str
    version: str
    # Empty when the device must already hold the version.
    bundle_sha256: str = ""
    bundle_size: int = 0
    # "rollout:<id>", "rollback:<id>" or "pin".
    source: str = ""
    last_error: str = ""
    # Versions rolled back from: the device quarantines them.
    rejected_versions: list[str] = Field(default_factory=list)


class BundleRecord(_Record):
    sha256: str
    name: str
    version: str
    size: int
    key_id: str
    path: str
    uploaded_at: float


class RolloutState(StrEnum):
    INSTALLING = "INSTALLING"
    BAKING = "BAKING"
    PAUSED = "PAUSED"
    SUCCEEDED = "SUCCEEDED"
    ROLLED_BACK = "ROLLED_BACK"

    @property
    def finished(self) -> bool:
        return self in (RolloutState.SUCCEEDED, RolloutState.ROLLED_BACK)


class Verdict(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


class DeviceInstall(StrEnum):
    PENDING = "PENDING"
    INSTALLED = "INSTALLED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"


class WaveRecord(_Record):
    index: int
    percent: float
    devices: list[str] = Field(default_factory=list)
    verdict: Verdict | None = None
    reason: str = ""


class PreviousVersion(_Record):
    version: str
    bundle_sha256: str = ""
    bundle_size: int = 0


class RolloutSpec(_Record):
    bundle_sha256: str
    selector: dict[str, str] = Field(default_factory=dict)
    steps: list[float]
    bake_s: float = Field(ge=0)
    gates: list[str] = Field(default_factory=list)
    min_devices: int = Field(default=1, ge=1)
    min_requests: int = Field(default=20, ge=1)
    max_install_failure_rate: float = Field(default=0.2, ge=0, le=1)
    max_timeout_rate: float = Field(default=0.2, ge=0, le=1)
    install_timeout_s: float = Field(default=600.0, gt=0)
    # Where this rollout's events are POSTed, besides the controller's global webhooks.
    webhook_url: str = Field(default="", pattern=r"^(https?://\S+)?$")


class RolloutRecord(_Record):
    rollout_id: str
    model_name: str
    version: str
    bundle_size: int
    spec: RolloutSpec
    state: RolloutState = RolloutState.INSTALLING
    current_wave: int = 0
    waves: list[WaveRecord] = Field(default_factory=list)
    # Eligible devices in cohort order (stable hash), fixed when the rollout starts.
    eligible: list[str] = Field(default_factory=list)
    previous: dict[str, PreviousVersion] = Field(default_factory=dict)
    installs: dict[str, DeviceInstall] = Field(default_factory=dict)
    install_errors: dict[str, str] = Field(default_factory=dict)
    # Baseline cohort figures of the last evaluation that had one; used once every device moved.
    baseline: dict[str, float] = Field(default_factory=dict)
    # The control cohort: devices of the last wave kept on the old version until that wave is
    # judged, so relative gates always have a concurrent baseline (cohorts.control_cohort).
    control: list[str] = Field(default_factory=list)
    # True once the last wave passed and its control devices were told to install.
    control_released: bool = False
    reason: str = ""
    created_at: float
    updated_at: float
    # Bumped by every write; replicas compare-and-set on it (fleet/controller/store/rules.py).
    revision: int = 0


class Measurement(_Record):
    wave: int
    gate: str
    metric: str
    canary_value: float
    baseline_value: float
    threshold: float
    verdict: Verdict
    canary_devices: int
    baseline_devices: int
    note: str = ""
    evaluated_at: float


class AuditRecord(_Record):
    at: float
    actor: str
    action: str
    detail: dict[str, object] = Field(default_factory=dict)
