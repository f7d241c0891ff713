"""Telemetry payloads: the model's fields, a template or a generator, plus the tracking fields.

Every message carries ``device_id``, ``seq`` (per device, from 1, one sequence across the
device's telemetry and events) and ``ts`` (send time, milliseconds since the epoch), so the
receiving side can count loss, duplicates and reordering (see :mod:`fleet_sim._sink`), and
``run``, the run's id, so a receiver can tell runs apart (an outbox may replay an old run).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fleet_sim._scenario import PayloadSpec

__all__ = ["RESERVED_FIELDS", "PayloadBuilder", "import_generator", "template_fields"]

RESERVED_FIELDS = ("device_id", "seq", "ts", "run")
_TRACKING = RESERVED_FIELDS[:3]  # without "run"
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)
_encode = _ENCODER.encode


def _object_encoder() -> Callable[[dict[str, Any]], str]:
    """A function encoding a dict exactly as ``_encode`` does, minus the per-call setup.

    ``JSONEncoder.encode`` builds a new C encoder on every call; that setup costs more than
    encoding a small telemetry dict, so build it once (the same C code, the same bytes).
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has the C accelerator
        return _encode
    e = _ENCODER
    try:  # the arguments JSONEncoder.iterencode passes (CPython 3.11 to 3.13)
        c_encode = make(
            None,  # markers: check_circular=False
            e.default,
            json.encoder.encode_basestring_ascii,  # ensure_ascii=True
            e.indent,
            e.key_separator,
            e.item_separator,
            e.sort_keys,
            e.skipkeys,
            e.allow_nan,
        )
    except TypeError:  # pragma: no cover - another json version: keep the plain path
        return _encode
    join = "".join

    def encode_object(obj: dict[str, Any]) -> str:
        return join(c_encode(obj, 0))

    probe = {"a": 1.5, "b": [None, True, -0.0, math.nan, 10**20], "\u00e9": {"c": "\n\u2603"}}
    try:
        same = encode_object(probe) == _encode(probe)
    except Exception:  # noqa: BLE001 # pragma: no cover - as above
        same = False
    return encode_object if same else _encode


_encode_object = _object_encoder()

Render = Callable[[Mapping[str, Any]], Any]
Generator = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


def template_fields(template: Any) -> set[str]:
    """Every ``${name}`` used in a template."""
    if isinstance(template, str):
        return set(_PLACEHOLDER.findall(template))
    if isinstance(template, dict):
        return set().union(*(template_fields(v) for v in template.values()))
    if isinstance(template, list):
        return set().union(*(template_fields(v) for v in template))
    return set()


def _compile(template: Any) -> Render:
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole is not None:
            key = whole.group(1)
            return lambda values: values.get(key)
        if _PLACEHOLDER.search(template) is None:
            return lambda _values: template

        def text(values: Mapping[str, Any]) -> str:
            return _PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), "")), template)

        return text
    if isinstance(template, dict):
        parts = [(k, _compile(v)) for k, v in template.items()]
        return lambda values: {k: render(values) for k, render in parts}
    if isinstance(template, list):
        items = [_compile(v) for v in template]
        return lambda values: [render(values) for render in items]
    return lambda _values: template


def _load_file(path: Path) -> Any:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]  # noqa: S324 - a name
    key = f"fleet_sim_user.{path.stem}_{digest}"
    module = sys.modules.get(key)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


def import_object(spec: str) -> Any:
    """Import ``"package.module:name"`` or ``"path/to/file.py:name"``.

    Raises:
        ValueError: Not in that form, or it cannot be imported.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r} is not 'module:name' or 'file.py:name'")
    try:
        obj: Any = (
            _load_file(Path(module_name))
            if module_name.endswith(".py")
            else importlib.import_module(module_name)
        )
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, OSError) as exc:
        raise ValueError(f"cannot import {spec!r}: {exc}") from None
    return obj


def import_generator(spec: str) -> Generator:
    """Import a payload generator ``"module:function"`` or ``"file.py:function"``.

    Raises:
        ValueError: It cannot be imported or is not callable.
    """
    obj = import_object(spec)
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable")  # noqa: TRY004 - a configuration error
    return obj  # type: ignore[no-any-return]


class PayloadBuilder:
    """Builds one device's telemetry messages (JSON bytes)."""

    __slots__ = ("_context", "_generator", "_pad", "_render", "_run", "_tail_id", "_tail_run")

    def __init__(
        self, spec: PayloadSpec, *, thing: str, group: str, index: int, run_id: str | None = None
    ) -> None:
        """Compile the spec for one device; ``run_id`` is added as ``run`` when given."""
        self._context = {"thing": thing, "group": group, "index": index}
        self._run = run_id
        self._render = _compile(spec.template) if spec.template is not None else None
        self._generator = import_generator(spec.generator) if spec.generator else None
        self._pad = spec.pad_to_bytes
        # The tracking fields' constant text, rendered once: '"device_id":"<thing>","seq":'
        # and '}' or ',"run":"<run>"}'.
        self._tail_id = '"device_id":' + _encode_object({"": thing})[4:-1] + ',"seq":'
        self._tail_run = "}" if run_id is None else ',"run":' + _encode_object({"": run_id})[4:]

    def fields(self, telemetry: dict[str, Any]) -> dict[str, Any]:
        """The message body before the tracking fields are added."""
        if self._render is not None:
            out = self._render({**self._context, **telemetry})
            return dict(out) if isinstance(out, dict) else {"value": out}
        if self._generator is not None:
            return dict(self._generator(telemetry, dict(self._context)))
        return telemetry

    def encode(self, telemetry: dict[str, Any], seq: int, ts_ms: int) -> bytes:
        """The message: fields plus ``device_id``, ``seq`` and ``ts``."""
        body = (
            telemetry
            if self._render is None and self._generator is None
            else self.fields(telemetry)
        )
        if (
            not self._pad
            and type(seq) is int
            and type(ts_ms) is int
            and body.keys().isdisjoint(RESERVED_FIELDS if self._run is not None else _TRACKING)
        ):
            # Fast path: the tracking fields go last, so their text is appended to the
            # encoded fields (same bytes as encoding the whole dict; ``body`` is untouched).
            data = _encode_object(body)
            sep = "," if len(data) > 2 else ""  # noqa: PLR2004 - "{}"
            return f'{data[:-1]}{sep}{self._tail_id}{seq},"ts":{ts_ms}{self._tail_run}'.encode()
        body["device_id"] = self._context["thing"]
        body["seq"] = seq
        body["ts"] = ts_ms
        if self._run is not None:
            body["run"] = self._run
        data = _encode(body)
        if self._pad and len(data) < self._pad:
            body["pad"] = "x" * max(0, self._pad - len(data) - 9)
            data = _encode(body)
        return data.encode()


def encode_event(
    thing: str, name: str, data: Mapping[str, Any], seq: int, ts_ms: int, run_id: str | None
) -> bytes:
    """An event message (same tracking fields as telemetry)."""
    body = {"event": name, **data, "device_id": thing, "seq": seq, "ts": ts_ms}
    if run_id is not None:
        body["run"] = run_id
    return _encode_object(body).encode()
