"""First boot: fleet provisioning by claim (CSR), identity persisted; later boots reuse it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cloud_stubs._state import issue_claim, load_ca
from cloud_stubs.provisioning._store import ProvisioningStore
from edge_agent._identity import CN_CACHE, load_identity
from tests.edge_agent.conftest import AgentEnv, running_agent, subscribed

TEMPLATE = "EdgeFleet"
BODY: dict[str, Any] = {
    "Parameters": {"SerialNumber": {"Type": "String"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {"ThingName": {"Fn::Join": ["", ["edge-", {"Ref": "SerialNumber"}]]}},
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {
                "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                "Status": "ACTIVE",
            },
        },
    },
}


async def test_first_boot_provisions_by_claim_then_reuses_the_identity(
    agent_env: AgentEnv, tmp_path: Path
):
    cloud = agent_env.cloud
    store = ProvisioningStore(cloud.paths)
    try:
        store.put_template(TEMPLATE, BODY)
    finally:
        store.close()
    claim = issue_claim(cloud.registry, load_ca(cloud.paths), "claim")
    identity_dir = tmp_path / "identity"
    agent_env.cert_file = identity_dir / "device.pem"
    agent_env.key_file = identity_dir / "device.key"
    config = agent_env.config(
        f"""
[provisioning]
claim_cert_file = {json.dumps(str(claim.cert_file))}
claim_key_file = {json.dumps(str(claim.key_file))}
template_name = "{TEMPLATE}"
parameters = {{ SerialNumber = "0042" }}
timeout_s = 10
""",
        system_interval_s=1,
    )
    assert not agent_env.cert_file.exists()
    async with (
        subscribed(cloud, "dt/edge-0042/telemetry/system") as sub,
        running_agent(config) as agent,
    ):
        assert agent.session is not None
        assert agent.session.device.thing_name == "edge-0042"
        await sub.wait_for(lambda msgs: len(msgs) >= 1)
    assert agent_env.cert_file.exists()
    assert agent_env.key_file.stat().st_mode & 0o777 == 0o600
    record = json.loads((agent_env.state_dir / "identity.json").read_text())
    assert record["thing_name"] == "edge-0042"
    cert_before = agent_env.cert_file.read_bytes()

    # Later boots reuse the identity: the claim is not needed any more.
    claim.cert_file.unlink()
    async with running_agent(config) as again:
        assert again.session is not None
        assert again.session.device.thing_name == "edge-0042"
    assert agent_env.cert_file.read_bytes() == cert_before


def test_the_certificate_cn_is_cached_per_certificate(agent_env: AgentEnv) -> None:
    """Later starts take the thing name from the cache instead of parsing X.509 again."""
    config = agent_env.config()
    agent_env.state_dir.mkdir(parents=True, exist_ok=True)
    assert load_identity(config).thing_name == agent_env.thing_name
    cache = agent_env.state_dir / CN_CACHE
    record = json.loads(cache.read_text())
    assert record["thing_name"] == agent_env.thing_name
    # The cache is what is used next time (proved by a different name under the same digest).
    cache.write_text(json.dumps({**record, "thing_name": "from-cache"}))
    assert load_identity(config).thing_name == "from-cache"
    # Another certificate (different digest) is parsed again.
    cache.write_text(json.dumps({"cert_sha256": "0" * 64, "thing_name": "stale"}))
    assert load_identity(config).thing_name == agent_env.thing_name
