"""The shipped examples: Kubernetes manifests and the sink's subscriptions for the scenarios."""

from __future__ import annotations

from pathlib import Path

import yaml

from fleet_sim import parse_scenario
from fleet_sim._sink import telemetry_filters

K8S = Path(__file__).parents[2] / "examples" / "k8s"


def test_indexed_job_runs_one_shard_per_pod() -> None:
    (job,) = yaml.safe_load_all((K8S / "fleet-sim-job.yaml").read_text())
    spec = job["spec"]
    assert job["kind"] == "Job"
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"]
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["SHARDS"]["value"] == str(spec["completions"])
    command = " ".join(container["args"])
    assert '--shard "${JOB_COMPLETION_INDEX}/${SHARDS}"' in command
    assert "shard-${JOB_COMPLETION_INDEX}.json" in command
    (merge,) = yaml.safe_load_all((K8S / "fleet-sim-merge.yaml").read_text())
    assert "fleet-sim report merge /reports/shard-*.json" in " ".join(
        merge["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    kinds = [d["kind"] for d in yaml.safe_load_all((K8S / "volumes.yaml").read_text())]
    assert kinds == ["PersistentVolumeClaim", "PersistentVolumeClaim", "ConfigMap"]


def test_sink_subscribes_to_every_telemetry_topic() -> None:
    scenario = parse_scenario("""\
name: t
groups:
  - {name: a, model: robot_vacuum, count: 1, name_pattern: "a-{index}"}
  - {name: b, model: robot_vacuum, count: 1, name_pattern: "b-{index}",
     telemetry: {topic: "dt/{thing}/{group}/state"}}
  - {name: c, model: environment_sensor, count: 1, name_pattern: "c-{index}",
     telemetry: {topic: "dt/{thing}/telemetry", events: false}}
""")
    assert telemetry_filters(scenario) == ["dt/+/telemetry", "dt/+/events", "dt/+/b/state"]
