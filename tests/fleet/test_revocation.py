"""Revocation (issue 11, item 14): `fleetctl remove` puts the device's key on a revocation list
that the controller checks on every call and at enrollment, persisted in the store. A real
controller on each store, a real `edgefleet serve --controller` process, a real fleetctl."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from fleet.agent.identity import load_identity
from fleet.controller.app import ControllerApp
from fleet.ctl.client import AdminClient, AdminCredential
from fleet.pki import make_csr, new_private_key
from protos.edgefleet.fleet.v1 import admin_pb2, agent_pb2, agent_pb2_grpc
from testkit.fleet import MODEL, controller_settings, wait_for
from testkit.fleet_models import build_model_dir
from testkit.fleet_processes import ServeProcess, fleetctl

# edgefleet serve --controller as a child process: a system test.
pytestmark = pytest.mark.system


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> dict[str, object]:
    if request.param == "sqlite":
        return {}
    postgres = request.getfixturevalue("postgres_server")
    database = postgres.create_database()
    return {
        "store": postgres.dsn(database, with_password=False),
        "store_password": postgres.password,
    }


async def _enroll(app: ControllerApp, admin: AdminClient, device_id: str, key) -> bytes:
    """Enroll `device_id` with a fresh token and the given key; the certificate."""
    token = await admin.stub.CreateEnrollmentToken(admin_pb2.CreateEnrollmentTokenRequest())
    credential = AdminCredential.load(app.admin_credential_path)
    tls = grpc.ssl_channel_credentials(root_certificates=credential.ca_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{app.enroll_port}", tls) as channel:
        response = await agent_pb2_grpc.EnrollmentServiceStub(channel).Enroll(
            agent_pb2.EnrollRequest(
                token=token.token, device_id=device_id, csr_pem=make_csr(key, device_id)
            )
        )
    return bytes(response.certificate_pem)


async def _download_as(app: ControllerApp, identity) -> grpc.aio.AioRpcError:
    """Call the agent API with a device's certificate; the error it gets."""
    device = AdminCredential(
        address=f"127.0.0.1:{app.port}",
        ca_pem=identity.ca_pem,
        certificate_pem=identity.certificate_pem,
        key_pem=identity.key_pem,
    )
    async with device.channel() as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.Download(agent_pb2.DownloadRequest(bundle_sha256="ab" * 32)):
                pass
    return refused.value


async def _devices(admin: AdminClient) -> dict[str, admin_pb2.Device]:
    listed = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
    return {device.device_id: device for device in listed.devices}


async def test_removed_device_cannot_reconnect_or_enroll_again_with_its_key(
    tmp_path, signing_keys, store
):
    settings = controller_settings(tmp_path / "controller", signing_keys[1].parent, **store)
    app = ControllerApp(settings)
    await app.start()
    credential = AdminCredential.load(app.admin_credential_path)
    admin = AdminClient.connect(credential, f"127.0.0.1:{app.port}")
    token = await admin.stub.CreateEnrollmentToken(admin_pb2.CreateEnrollmentTokenRequest())
    root = tmp_path / "node"
    build_model_dir(root / "repo", MODEL, "1")
    node = ServeProcess.for_controller(root, app, signing_keys[1], "cam-r", token.token)
    second: ControllerApp | None = None
    try:
        await node.start()

        async def online() -> bool:
            device = (await _devices(admin)).get("cam-r")
            return device is not None and device.online

        await wait_for(online, 60, "cam-r online", describe=node.log)
        old = load_identity(node.state_dir)
        assert old is not None
        # While enrolled, its certificate opens the agent API (an unknown bundle: NOT_FOUND).
        assert (await _download_as(app, old)).code() == grpc.StatusCode.NOT_FOUND

        code, out, err = await fleetctl("remove", "cam-r", credential=app.admin_credential_path)
        assert code == 0 and "revoked key" in out, (out, err)
        assert "cam-r" not in await _devices(admin)

        refused = await _download_as(app, old)
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "revoked" in str(refused.details())

        # The old key cannot enroll again, under its old id or another one.
        old_key = _load_key(old.key_pem)
        for device_id in ("cam-r", "cam-other"):
            with pytest.raises(grpc.aio.AioRpcError) as again:
                await _enroll(app, admin, device_id, old_key)
            assert again.value.code() == grpc.StatusCode.PERMISSION_DENIED, device_id
            assert "revoked" in str(again.value.details())

        # A new key may take the old id; the old certificate (same common name) still fails,
        # so the running serve process, which keeps retrying with it, never comes back.
        await _enroll(app, admin, "cam-r", new_private_key())
        refused = await _download_as(app, old)
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "revoked" in str(refused.details())
        for _ in range(10):
            assert not (await _devices(admin))["cam-r"].online, node.log()
            await asyncio.sleep(0.3)
        assert node.process is not None and node.process.returncode is None

        # The revocation list is in the store: a restarted controller still refuses the key.
        await admin.__aexit__(None, None, None)
        await app.stop(0.1)
        second = ControllerApp(
            settings.model_copy(update={"port": app.port, "enroll_port": app.enroll_port})
        )
        await second.start()
        admin = AdminClient.connect(credential, f"127.0.0.1:{second.port}")
        refused = await _download_as(second, old)
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "revoked" in str(refused.details())
        with pytest.raises(grpc.aio.AioRpcError) as after_restart:
            await _enroll(second, admin, "cam-3", old_key)
        assert after_restart.value.code() == grpc.StatusCode.PERMISSION_DENIED

        audit = await admin.stub.ListAuditEntries(admin_pb2.ListAuditEntriesRequest())
        removal = next(entry for entry in audit.entries if entry.action == "device.remove")
        assert removal.actor == "admin:operator" and out.split()[-1] in removal.detail_json
    finally:
        await node.stop()
        await admin.__aexit__(None, None, None)
        for controller in (app, second):
            if controller is not None and controller.services is not None:
                await controller.stop(0.1)


def _load_key(pem: bytes):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(pem, password=None)
