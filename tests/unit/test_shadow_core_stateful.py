"""Property-based tests of the shadow engine: a stateful model and a bounded fuzz."""

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cloud_stubs.shadow import (
    ShadowDocument,
    ShadowOutcome,
    handle_delete,
    handle_get,
    handle_update,
)

# --------------------------------------------------------------------------- reference model
# Deliberately written differently from the engine: the delta is computed from flattened
# leaf paths, equality through a canonical form.

# Few keys and values, so that updates collide and the interesting cases (1 vs 1.0 vs
# true, objects emptied by null, type changes) happen often.
KEYS = st.sampled_from(["a", "b", "c"])
SCALARS = st.sampled_from([0, 1, 1.0, 2.5, True, False, "x", ""])
ARRAYS = st.lists(SCALARS, max_size=2)


def values(depth: int) -> st.SearchStrategy[Any]:
    """JSON values whose container depth stays within the nesting limit."""
    if depth == 0:
        return st.one_of(SCALARS, ARRAYS)
    objects = st.dictionaries(KEYS, st.one_of(values(depth - 1), st.none()), max_size=3)
    return st.one_of(SCALARS, ARRAYS, objects)


VALUES = values(3)
PATCHES = st.dictionaries(KEYS, st.one_of(VALUES, st.none()), max_size=4)
SECTION = st.one_of(st.just("absent"), st.none(), PATCHES)


def canonical(value: Any) -> Any:
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("num", float(value))
    if isinstance(value, list):
        return ("list", tuple(canonical(v) for v in value))
    if isinstance(value, dict):
        return ("obj", tuple(sorted((k, canonical(v)) for k, v in value.items())))
    return ("other", value)


def strip(value: Any) -> Any:
    """Remove null members and empty-object members (the documented pruning choice)."""
    if isinstance(value, dict):
        out = {}
        for key, member in value.items():
            if member is None:
                continue
            cleaned = strip(member)
            if cleaned == {}:
                continue
            out[key] = cleaned
        return out
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def ref_merge(stored: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    result = dict(stored)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = ref_merge(result[key], value)
        else:
            result[key] = value
    return strip(result)  # type: ignore[no-any-return]


def leaves(value: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for key, member in value.items():
        if isinstance(member, dict):
            out.update(leaves(member, (*prefix, key)))
        else:
            out[(*prefix, key)] = member
    return out


_MISSING = object()


def lookup(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def ref_delta(desired: dict[str, Any], reported: dict[str, Any]) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    for path, wanted in leaves(desired).items():
        actual = lookup(reported, path)
        if actual is _MISSING or canonical(actual) != canonical(wanted):
            node = delta
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = wanted
    return delta


def mirrors(state: Any, metadata: Any) -> bool:
    """Metadata has exactly one ``{"timestamp": int}`` leaf per state leaf."""
    if isinstance(state, dict):
        return (
            isinstance(metadata, dict)
            and state.keys() == metadata.keys()
            and all(mirrors(state[k], metadata[k]) for k in state)
        )
    if isinstance(state, list):
        return (
            isinstance(metadata, list)
            and len(state) == len(metadata)
            and all(mirrors(s, m) for s, m in zip(state, metadata, strict=True))
        )
    return (
        isinstance(metadata, dict)
        and metadata.keys() == {"timestamp"}
        and type(metadata["timestamp"]) is int
    )


def has_empty_object(value: Any) -> bool:
    if isinstance(value, dict):
        return not value or any(has_empty_object(v) for v in value.values())
    return False


def payloads(outcome: ShadowOutcome) -> dict[str, dict[str, Any]]:
    return {m.topic_suffix: m.payload for m in outcome.messages}


class ShadowMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.doc: ShadowDocument | None = None
        self.now = 1_700_000_000
        self.exists = False
        self.counter = 0  # last version consumed
        self.desired: dict[str, Any] = {}
        self.reported: dict[str, Any] = {}

    def tick(self) -> int:
        self.now += 1
        return self.now

    def _call(self, handler: Any, body: Any) -> ShadowOutcome:
        payload = json.dumps(body).encode() if not isinstance(body, bytes) else body
        outcome: ShadowOutcome = handler(
            self.doc, payload, thing_name="T", shadow_name=None, now=self.tick()
        )
        self.doc = outcome.document
        for message in outcome.messages:
            json.dumps(message.payload, allow_nan=False)
        return outcome

    @rule(desired=SECTION, reported=SECTION, token=st.none() | st.text(max_size=5))
    def update(self, desired: Any, reported: Any, token: str | None) -> None:
        state = {}
        if desired != "absent":
            state["desired"] = desired
        if reported != "absent":
            state["reported"] = reported
        self._accepted_update(state, token)

    @precondition(lambda self: bool(self.desired or self.reported))
    @rule(data=st.data())
    def delete_one_leaf(self, data: st.DataObject) -> None:
        """Null out one existing leaf: exercises pruning of emptied objects."""
        names = [name for name in ("desired", "reported") if getattr(self, name)]
        section = data.draw(st.sampled_from(names))
        path = data.draw(st.sampled_from(sorted(leaves(getattr(self, section)))))
        patch: Any = None
        for key in reversed(path):
            patch = {key: patch}
        self._accepted_update({section: patch}, None)

    def _accepted_update(self, state: dict[str, Any], token: str | None) -> None:
        body: dict[str, Any] = {"state": state}
        if token is not None:
            body["clientToken"] = token
        outcome = self._call(handle_update, body)
        messages = payloads(outcome)
        assert outcome.accepted
        self.counter += 1
        assert messages["update/accepted"]["version"] == self.counter
        assert messages["update/accepted"]["state"] == state
        if token is None:
            assert all("clientToken" not in p for p in messages.values())
        else:
            assert all(p["clientToken"] == token for p in messages.values())
        assert (messages["update/documents"]["previous"] is None) == (not self.exists)
        self.exists = True
        for name in ("desired", "reported"):
            if name not in state:
                continue
            section = state[name]
            current = getattr(self, name)
            setattr(self, name, {} if section is None else ref_merge(current, section))
        delta = ref_delta(self.desired, self.reported)
        if delta:
            assert canonical(messages["update/delta"]["state"]) == canonical(delta)
            assert messages["update/delta"]["version"] == self.counter
            assert mirrors(delta, messages["update/delta"]["metadata"])
        else:
            assert "update/delta" not in messages
        assert next(iter(messages)) == "update/accepted"
        assert list(messages)[-1] == "update/documents"

    @rule()
    def clear_state(self) -> None:
        outcome = self._call(handle_update, {"state": None})
        assert outcome.accepted
        self.counter += 1
        self.exists = True
        self.desired, self.reported = {}, {}

    @precondition(lambda self: self.exists)
    @rule(offset=st.sampled_from([-1, 1, 5]))
    def update_with_wrong_version(self, offset: int) -> None:
        outcome = self._call(handle_update, {"state": {}, "version": self.counter + offset})
        assert payloads(outcome) == {
            "update/rejected": {"code": 409, "message": "Version conflict"}
        }

    @precondition(lambda self: self.exists)
    @rule(patch=PATCHES)
    def update_with_right_version(self, patch: dict[str, Any]) -> None:
        outcome = self._call(handle_update, {"state": {"reported": patch}, "version": self.counter})
        assert outcome.accepted
        self.counter += 1
        self.reported = ref_merge(self.reported, patch)

    @rule(payload=st.sampled_from([b"nope", b"[]", b'{"state": 1}', b'{"state":{"x":{}}}']))
    def rejected_update(self, payload: bytes) -> None:
        outcome = self._call(handle_update, payload)
        assert list(payloads(outcome)) == ["update/rejected"]

    @rule()
    def delete(self) -> None:
        outcome = self._call(handle_delete, {"clientToken": "d"})
        if self.exists:
            assert payloads(outcome) == {
                "delete/accepted": {
                    "version": self.counter,
                    "timestamp": self.now,
                    "clientToken": "d",
                }
            }
            self.counter += 1
        else:
            assert payloads(outcome)["delete/rejected"]["code"] == 404
        self.exists = False
        self.desired, self.reported = {}, {}

    @invariant()
    def get_matches_model(self) -> None:
        before = self.doc.version if self.doc else 0
        outcome = self._call(handle_get, b"")
        assert (self.doc.version if self.doc else 0) == before
        if not self.exists:
            assert payloads(outcome) == {
                "get/rejected": {"code": 404, "message": "No shadow exists with name: 'T'"}
            }
            return
        body = payloads(outcome)["get/accepted"]
        assert body["version"] == self.counter
        state = body["state"]
        assert canonical(state.get("desired", {})) == canonical(self.desired)
        assert canonical(state.get("reported", {})) == canonical(self.reported)
        delta = ref_delta(self.desired, self.reported)
        if delta:
            assert canonical(state["delta"]) == canonical(delta)
        else:
            assert "delta" not in state
        assert not has_empty_object(state.get("delta", {"x": 1}))
        assert not any(has_empty_object(state[s]) for s in ("desired", "reported") if s in state)
        metadata = body["metadata"]
        assert set(metadata) == set(state) - {"delta"}
        for section in ("desired", "reported"):
            assert mirrors(state.get(section, {}), metadata.get(section, {}))


ShadowMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestShadowMachine = ShadowMachine.TestCase


# --------------------------------------------------------------------------- fuzz

JSONISH = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=70),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(["state", "clientToken", "version", "desired", "reported", "delta"])
REQUESTS = st.one_of(
    st.binary(max_size=64),
    JSONISH.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(FIELDS, JSONISH, max_size=3).map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["desired", "reported", "delta"]), JSONISH, max_size=2).map(
        lambda s: json.dumps({"state": s}).encode()
    ),
)
STORED = st.sampled_from(
    [
        None,
        ShadowDocument(),
        ShadowDocument(
            exists=True, version=3, desired={"a": 1}, desired_metadata={"a": {"timestamp": 1}}
        ),
        ShadowDocument(exists=False, version=7, deleted_at=5),
    ]
)
HANDLERS = st.sampled_from([handle_update, handle_get, handle_delete])


def check_single_response(outcome: ShadowOutcome, handler: Any) -> None:
    operation = {handle_update: "update", handle_get: "get", handle_delete: "delete"}[handler]
    suffixes = [m.topic_suffix for m in outcome.messages]
    responses = [s for s in suffixes if s in {f"{operation}/accepted", f"{operation}/rejected"}]
    assert len(responses) == 1
    assert suffixes[0] == responses[0]
    assert outcome.accepted == responses[0].endswith("accepted")
    for message in outcome.messages:
        json.dumps(message.payload, allow_nan=False)
        if message.topic_suffix.endswith("rejected"):
            assert type(message.payload["code"]) is int


@settings(max_examples=300, deadline=None)
@given(doc=STORED, handler=HANDLERS, payload=REQUESTS)
def test_fuzz_never_raises(doc: ShadowDocument | None, handler: Any, payload: bytes) -> None:
    outcome = handler(doc, payload, thing_name="T", shadow_name=None, now=1_700_000_000)
    check_single_response(outcome, handler)


def test_fuzz_pathological_payloads() -> None:
    cases = [
        b"[" * 100_000,
        b'{"state":' * 50_000,
        b'{"state":{"desired":' + b'{"a":' * 2000 + b"1" + b"}" * 2002,
        b'{"state":{"desired":{"a":' + b"[" * 3000 + b"]" * 3000 + b"}}}",
        b'{"state":{"desired":{"a":"' + b"x" * 200_000 + b'"}}}',
        b'{"state":{"desired":{"n":' + b"9" * 5000 + b"}}}",
        b'{"state":{"reported":{"n":-Infinity}}}',
        b'{"state":{"reported":{"s":"\\ud800"}}, "clientToken":"\\udc00"}',
        b"\xef\xbb\xbf{}",
        b"\x00" * 10,
        b"null",
        b"  \n ",
    ]
    for payload in cases:
        for handler in (handle_update, handle_get, handle_delete):
            for doc in (None, ShadowDocument(exists=True, version=1)):
                outcome = handler(doc, payload, thing_name="T", shadow_name="s", now=1)
                check_single_response(outcome, handler)
