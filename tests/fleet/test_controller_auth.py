"""Enrollment and authentication through the real controller servers: one-time tokens, client
certificates from the controller's CA, mutual TLS, admin-only API, audit log."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import stat
import urllib.error
import urllib.request
from typing import Any

import grpc
import pytest

from fleet.controller.app import ControllerApp
from fleet.ctl.client import AdminClient, AdminCredential
from fleet.pki import make_csr, new_private_key, private_key_pem
from protos.edgefleet.fleet.v1 import admin_pb2, agent_pb2, agent_pb2_grpc
from testkit.fleet import controller_settings, scrape_controller


async def _enroll(controller, token: str, device_id: str):
    credential = AdminCredential.load(controller.admin_credential_path)
    key = new_private_key()
    tls = grpc.ssl_channel_credentials(root_certificates=credential.ca_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{controller.enroll_port}", tls) as channel:
        stub = agent_pb2_grpc.EnrollmentServiceStub(channel)
        response = await stub.Enroll(
            agent_pb2.EnrollRequest(
                token=token, device_id=device_id, csr_pem=make_csr(key, device_id)
            )
        )
    return key, response


async def test_enrollment_token_is_one_time_and_carries_labels(controller, admin):
    token = await admin.stub.CreateEnrollmentToken(
        admin_pb2.CreateEnrollmentTokenRequest(labels={"site": "lobby"})
    )
    _, response = await _enroll(controller, token.token, "cam-1")
    assert response.device_id == "cam-1"
    assert dict(response.labels) == {"site": "lobby"}
    assert b"BEGIN CERTIFICATE" in response.certificate_pem

    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await _enroll(controller, token.token, "cam-2")
    assert reused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "already used" in str(reused.value.details())

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await _enroll(controller, "not-a-token", "cam-3")
    assert unknown.value.code() == grpc.StatusCode.PERMISSION_DENIED

    devices = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
    assert [device.device_id for device in devices.devices] == ["cam-1"]
    audit = await admin.stub.ListAuditEntries(admin_pb2.ListAuditEntriesRequest())
    actions = [entry.action for entry in audit.entries]
    assert actions == ["enrollment-token.create", "device.enroll"]
    assert audit.entries[0].actor == "admin:operator"


async def test_device_certificate_opens_the_agent_api_but_not_the_admin_api(controller, admin):
    token = await admin.stub.CreateEnrollmentToken(admin_pb2.CreateEnrollmentTokenRequest())
    key, response = await _enroll(controller, token.token, "cam-9")
    device = AdminCredential(
        address=f"127.0.0.1:{controller.port}",
        ca_pem=response.ca_certificate_pem,
        certificate_pem=response.certificate_pem,
        key_pem=private_key_pem(key),
    )
    async with AdminClient.connect(device) as as_device:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await as_device.stub.ListDevices(admin_pb2.ListDevicesRequest())
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The same certificate is accepted by the agent API: a download of an unknown bundle is
    # NOT_FOUND, not an authentication failure.
    async with device.channel() as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            async for _ in stub.Download(agent_pb2.DownloadRequest(bundle_sha256="ab" * 32)):
                pass
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_fleetctl_without_the_admin_credential_is_refused(controller):
    credential = AdminCredential.load(controller.admin_credential_path)
    no_certificate = dataclasses.replace(credential, certificate_pem=b"", key_pem=b"")
    async with AdminClient.connect(no_certificate, f"127.0.0.1:{controller.port}") as client:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.stub.ListDevices(admin_pb2.ListDevicesRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_agent_with_a_certificate_from_another_ca_is_refused(controller, tmp_path):
    from fleet.pki import CertificateAuthority

    rogue_ca = CertificateAuthority.load_or_create(tmp_path / "rogue")
    key_pem, cert_pem = rogue_ca.issue_client("device:cam-1")
    credential = AdminCredential.load(controller.admin_credential_path)
    rogue = dataclasses.replace(credential, certificate_pem=cert_pem, key_pem=key_pem)
    async with rogue.channel(f"127.0.0.1:{controller.port}") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.Download(agent_pb2.DownloadRequest(bundle_sha256="ab" * 32)):
                pass
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_removed_device_is_cut_off_and_refused(tmp_path, controller, admin, signing_keys):
    from testkit.fleet import start_node, wait_for

    node = await start_node("cam-5", tmp_path / "node", controller, admin, (signing_keys[1],))
    try:
        await wait_for(node.online, 20, "agent online")
        await admin.stub.RemoveDevice(admin_pb2.RemoveDeviceRequest(device_id="cam-5"))
        await wait_for(lambda: not node.online(), 10, "the stream to be closed")
        await asyncio.sleep(1.0)  # the agent keeps retrying; every attempt is refused
        assert not node.online()
        listed = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
        assert not listed.devices
        audit = await admin.stub.ListAuditEntries(admin_pb2.ListAuditEntriesRequest())
        assert audit.entries[-1].action == "device.remove"
        # The model keeps serving: losing the controller never stops inference.
        assert node.active() == "1"
    finally:
        await node.stop()


async def test_every_admin_method_refuses_a_device_before_any_servicer_code_runs(controller, admin):
    """Authorization is one interceptor per service (issue 11, item 11): every AdminService
    method the proto declares, including ones added later, refuses a device certificate with
    PERMISSION_DENIED; the agent API refuses the admin certificate."""
    token = await admin.stub.CreateEnrollmentToken(admin_pb2.CreateEnrollmentTokenRequest())
    key, response = await _enroll(controller, token.token, "cam-7")
    device = AdminCredential(
        address=f"127.0.0.1:{controller.port}",
        ca_pem=response.ca_certificate_pem,
        certificate_pem=response.certificate_pem,
        key_pem=private_key_pem(key),
    )
    service = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
    refused = {}
    async with device.channel() as channel:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            try:
                if method.client_streaming:
                    call: Any = channel.stream_unary(path)

                    async def one():
                        yield b""  # every request message parses from zero bytes

                    await call(one(), timeout=10)
                elif method.server_streaming:
                    streaming: Any = channel.unary_stream(path)
                    async for _ in streaming(b"", timeout=10):
                        pass
                else:
                    unary: Any = channel.unary_unary(path)
                    await unary(b"", timeout=10)
                refused[method.name] = "OK"
            except grpc.aio.AioRpcError as error:
                refused[method.name] = error.code().name
    assert len(refused) >= 14
    assert set(refused.values()) == {"PERMISSION_DENIED"}, refused

    credential = AdminCredential.load(controller.admin_credential_path)
    async with credential.channel(f"127.0.0.1:{controller.port}") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as agent_refused:
            async for _ in stub.Download(agent_pb2.DownloadRequest(bundle_sha256="ab" * 32)):
                pass
    assert agent_refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_bad_certificate_request_does_not_burn_the_enrollment_token(controller, admin):
    """Issue 11, item 12: the CSR is checked before the one-time token is spent."""
    token = await admin.stub.CreateEnrollmentToken(admin_pb2.CreateEnrollmentTokenRequest())
    credential = AdminCredential.load(controller.admin_credential_path)
    tls = grpc.ssl_channel_credentials(root_certificates=credential.ca_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{controller.enroll_port}", tls) as channel:
        stub = agent_pb2_grpc.EnrollmentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.Enroll(
                agent_pb2.EnrollRequest(
                    token=token.token, device_id="cam-8", csr_pem=b"-----BEGIN nonsense"
                )
            )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, response = await _enroll(controller, token.token, "cam-8")  # the token still works
    assert response.device_id == "cam-8"


async def test_the_metrics_port_is_locked_like_the_other_doors(tmp_path, signing_keys):
    """Prometheus scrapes the controller over HTTPS under the fleet CA with a bearer token that
    only reads metrics; the same token after a restart (derived from the CA, nothing to
    redistribute), kept 0600 for Prometheus' credentials_file."""
    settings = controller_settings(tmp_path / "c", signing_keys[1].parent, metrics_port=0)
    tokens: list[str] = []
    for _start in range(2):
        app = ControllerApp(settings)
        await app.start()
        try:
            path = app.admin_credential_path
            token = json.loads(path.read_text())["metrics_token"]
            assert app.metrics_token_path.read_text() == token
            assert stat.S_IMODE(app.metrics_token_path.stat().st_mode) == 0o600
            status, body = await asyncio.to_thread(scrape_controller, path)
            assert status == 200 and "edgefleet_controller_devices" in body, (status, body[:300])
            missing = await asyncio.to_thread(scrape_controller, path, token="")
            assert missing[0] == 401 and "missing auth token" in missing[1], missing
            wrong = await asyncio.to_thread(scrape_controller, path, token=token[:-1] + "x")
            assert wrong == (401, "invalid auth token\n"), wrong
            # Plain HTTP gets no metrics: the TLS listener drops it.
            plain = f"http://127.0.0.1:{app.metrics_port}/metrics"
            with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
                await asyncio.to_thread(urllib.request.urlopen, plain, timeout=5)
            tokens.append(token)
        finally:
            await app.stop(0.2)
    assert tokens[0] == tokens[1]
