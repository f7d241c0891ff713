"""Payloads: tracking fields, templates, generators, padding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleet_sim import PayloadSpec
from fleet_sim._payload import PayloadBuilder, encode_event, template_fields

EXAMPLE = Path(__file__).parents[2] / "examples" / "scenarios" / "custom_model.py"


def decode(data: bytes) -> dict[str, Any]:
    out = json.loads(data)
    assert isinstance(out, dict)
    return out


def test_model_fields_plus_tracking_fields() -> None:
    b = PayloadBuilder(PayloadSpec(), thing="r-1", group="g", index=1, run_id="abc")
    msg = decode(b.encode({"battery": 50.5, "seq": "model's own"}, 7, 1234))
    assert msg == {"battery": 50.5, "seq": 7, "device_id": "r-1", "ts": 1234, "run": "abc"}


def test_template_keeps_types_and_formats_text() -> None:
    spec = PayloadSpec(
        template={
            "b": "${battery}",
            "name": "robot ${thing}",
            "n": [1, "${index}"],
            "nested": {"s": "${state}"},
            "const": True,
        }
    )
    assert template_fields(spec.template) == {"battery", "thing", "index", "state"}
    b = PayloadBuilder(spec, thing="r-1", group="g", index=4)
    msg = decode(b.encode({"battery": 50.5, "state": "docked"}, 1, 2))
    assert msg["b"] == 50.5
    assert msg["name"] == "robot r-1"
    assert msg["n"] == [1, 4]
    assert msg["nested"] == {"s": "docked"}
    assert msg["const"] is True
    assert "run" not in msg


def test_generator_from_a_file() -> None:
    spec = PayloadSpec(generator=f"{EXAMPLE}:tracker_payload")
    b = PayloadBuilder(spec, thing="p-1", group="probes", index=1)
    msg = decode(b.encode({"temperature": 20.0}, 3, 4))
    assert msg["fahrenheit"] == 68.0
    assert msg["group"] == "probes"
    assert msg["seq"] == 3


def test_bad_generator() -> None:
    with pytest.raises(ValueError, match="cannot import"):
        PayloadBuilder(PayloadSpec(generator="no.such.module:f"), thing="t", group="g", index=1)
    with pytest.raises(ValueError, match="not 'module:name'"):
        PayloadBuilder(PayloadSpec(generator="nocolon"), thing="t", group="g", index=1)


def test_padding() -> None:
    b = PayloadBuilder(PayloadSpec(pad_to_bytes=300), thing="t", group="g", index=1)
    data = b.encode({"x": 1}, 1, 2)
    assert 290 <= len(data) <= 300


def test_events_carry_the_same_tracking_fields() -> None:
    msg = decode(encode_event("r-1", "low_battery", {"battery": 19.5}, 9, 10, "run1"))
    assert msg == {
        "event": "low_battery",
        "battery": 19.5,
        "device_id": "r-1",
        "seq": 9,
        "ts": 10,
        "run": "run1",
    }
