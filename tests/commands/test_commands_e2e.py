"""Commands end to end: the stub's Commands service and device_sdk's Commands, both brokers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_stubs import LocalIoTCore
from cloud_stubs._service_client import tls_context
from cloud_stubs.commands import (
    NO_RESPONSE_REASON,
    ResourceNotFoundError,
    ValidationError,
    commands_control,
)
from device_sdk import RejectedError
from device_sdk.commands import (
    CommandFailedError,
    CommandRequest,
    Commands,
    CommandScheme,
    CommandStatus,
    command_topics,
)
from tests.commands.conftest import (
    create_command,
    device,
    get_execution,
    next_json,
    start,
    wait_status,
    watcher,
)

TERMINAL = ("SUCCEEDED", "FAILED", "REJECTED")


async def _set_led(request: CommandRequest) -> dict[str, Any]:
    return {"color": request.args["color"], "on": True, "raw": b"\x01\x02", "level": 3}


async def _serve(commands: Commands) -> asyncio.Task[None]:
    return asyncio.create_task(commands.serve(), name="test.commands.serve")


async def test_handled_command_succeeds_with_result_and_events(cloud: LocalIoTCore) -> None:
    await create_command(cloud, "set-led", {"name": "set-led", "args": {"color": "red"}})
    async with (
        watcher(cloud, "$aws/events/commandExecution/set-led/+") as events,
        device(cloud, "cmd-ok") as dev,
    ):
        commands = Commands(dev, allow={"set-led"})
        commands.register("set-led", _set_led)
        async with commands:
            server = await _serve(commands)
            ex = await start(cloud, "set-led", "cmd-ok")
            done = await wait_status(cloud, ex, "cmd-ok", TERMINAL)
            server.cancel()
        seen = [await next_json(events, "$aws/events/commandExecution/set-led/+") for _ in range(3)]
    assert done["status"] == "SUCCEEDED"
    assert done["result"] == {
        "color": {"S": "red"},
        "on": {"B": True},
        "raw": {"BIN": base64.b64encode(b"\x01\x02").decode()},
        "level": {"S": "3"},
    }
    assert done["targetArn"].endswith(":thing/cmd-ok")
    assert done["commandArn"].endswith(":command/set-led")
    assert done["completedAt"] >= done["createdAt"]
    assert [topic.rsplit("/", 1)[1] for topic, _ in seen] == [
        "CREATED",
        "IN_PROGRESS",
        "SUCCEEDED",
    ]
    for _, body in seen:
        assert body["executionId"] == ex
        assert body["eventType"] == "COMMAND_EXECUTION"
        assert body["timestamp"] > 1_600_000_000_000  # epoch milliseconds
    assert commands.statistics().succeeded == 1
    without = await commands_control(cloud, "get-execution", execution_id=ex, thing="cmd-ok")
    assert "result" not in without


async def test_unknown_and_not_allowed_commands_are_rejected(cloud: LocalIoTCore) -> None:
    await create_command(cloud, "dance", {"name": "dance"})
    await create_command(cloud, "reboot", {"name": "reboot"})
    await create_command(cloud, "garbage", b"\xff not json", "application/json")
    async with device(cloud, "cmd-rej") as dev:
        commands = Commands(dev, allow={"set-led"})
        commands.register("set-led", _set_led)
        commands.register("reboot", _set_led)  # registered but not on the allow-list
        async with commands:
            server = await _serve(commands)
            unknown = await start(cloud, "dance", "cmd-rej")
            blocked = await start(cloud, "reboot", "cmd-rej")
            garbage = await start(cloud, "garbage", "cmd-rej")
            results = [
                await wait_status(cloud, ex, "cmd-rej", TERMINAL)
                for ex in (unknown, blocked, garbage)
            ]
            server.cancel()
    assert [r["status"] for r in results] == ["REJECTED"] * 3
    assert [r["statusReason"]["reasonCode"] for r in results] == [
        "UNKNOWN_COMMAND",
        "COMMAND_NOT_ALLOWED",
        "INVALID_PAYLOAD",
    ]
    assert "dance" in results[0]["statusReason"]["reasonDescription"]
    assert commands.statistics().rejected == 3


async def test_no_answer_times_out_and_a_late_answer_still_completes(
    cloud: LocalIoTCore,
) -> None:
    await create_command(cloud, "slow", {"name": "slow"})
    async with device(cloud, "cmd-late") as dev, Commands(dev) as commands:
        ex = await start(cloud, "slow", "cmd-late", timeout_s=1)
        async with asyncio.timeout(10):
            execution = await anext(aiter(commands.executions()))
        assert execution.execution_id == ex
        timed_out = await wait_status(cloud, ex, "cmd-late", ("TIMED_OUT",))
        assert timed_out["statusReason"] == {"reasonCode": NO_RESPONSE_REASON}
        assert "completedAt" not in timed_out  # the cloud timeout is not terminal
        with pytest.raises(RejectedError) as refused:
            await commands.report(execution, CommandStatus.IN_PROGRESS)
        assert refused.value.code == "InvalidStateTransition"
        await commands.report(execution, CommandStatus.SUCCEEDED, result={"late": True})
        with pytest.raises(RejectedError) as final:
            await commands.report(execution, CommandStatus.FAILED, reason_code="X")
        assert final.value.code == "TerminalStateReached"
    done = await get_execution(cloud, ex, "cmd-late")
    assert done["status"] == "SUCCEEDED"
    assert "completedAt" in done
    assert "statusReason" not in done


async def test_handler_timeout_reports_device_timed_out(cloud: LocalIoTCore) -> None:
    async def hang(request: CommandRequest) -> None:
        await asyncio.sleep(30)

    async def broken(request: CommandRequest) -> None:
        raise CommandFailedError("LOW_BATTERY", "below 5%\nshutting down")

    await create_command(cloud, "hang", {"name": "hang"})
    await create_command(cloud, "broken", {"name": "broken"})
    async with device(cloud, "cmd-hang") as dev:
        commands = Commands(dev)
        commands.register("hang", hang, timeout_s=0.3)
        commands.register("broken", broken)
        async with commands:
            server = await _serve(commands)
            hung = await start(cloud, "hang", "cmd-hang", timeout_s=30)
            failed = await start(cloud, "broken", "cmd-hang")
            timed_out = await wait_status(cloud, hung, "cmd-hang", ("TIMED_OUT", *TERMINAL))
            failure = await wait_status(cloud, failed, "cmd-hang", TERMINAL)
            server.cancel()
    assert timed_out["status"] == "TIMED_OUT"
    assert timed_out["statusReason"]["reasonCode"] == "HANDLER_TIMEOUT"
    assert "completedAt" in timed_out  # device-reported TIMED_OUT is terminal
    assert failure["status"] == "FAILED"
    assert failure["statusReason"] == {
        "reasonCode": "LOW_BATTERY",
        "reasonDescription": "below 5% shutting down",
    }


async def _replies(dev: Any, execution_id: str) -> Any:
    """Every reply to an execution's updates, whichever variant the stub answers on.

    ``…/response/#`` has 8 levels, so it also works where 9-level filters are refused; it
    matches the device's own ``…/response/json`` too, which is skipped.
    """
    return dev.subscribe(f"{command_topics(dev.thing_name).base}/{execution_id}/response/#")


async def _next_reply(sub: Any) -> tuple[str, dict[str, Any]]:
    async with asyncio.timeout(10):
        async for msg in sub:
            verdict = msg.topic.split("/")[7]
            if verdict in ("accepted", "rejected"):
                return verdict, json.loads(msg.payload)
    raise AssertionError("subscription ended")


async def test_malformed_device_responses_get_rejected_replies(cloud: LocalIoTCore) -> None:
    await create_command(cloud, "noop", {"name": "noop"})
    topics = command_topics("cmd-bad")
    async with device(cloud, "cmd-bad") as dev:
        ex = await start(cloud, "noop", "cmd-bad", timeout_s=30)
        async with await _replies(dev, ex) as replies:
            cases = {
                b"{not json": "InvalidJson",
                b"[1, 2]": "InvalidRequest",
                b'{"status": "DONE"}': "InvalidRequest",
                b'{"status": "CREATED"}': "InvalidRequest",
                b'{"result": {"a": {"s": "x"}}}': "InvalidRequest",
                b'{"status": "SUCCEEDED", "result": {"k": "v"}}': "InvalidRequest",
                b'{"status": "SUCCEEDED", "result": {}}': "InvalidRequest",
                b'{"status": "SUCCEEDED", "result": {"k": {"S": "v"}}}': "InvalidRequest",
                b'{"status": "SUCCEEDED", "result": {"k": {"bin": "!!"}}}': "InvalidRequest",
                b'{"status": "FAILED", "statusReason": {"reasonCode": "lower"}}': "InvalidRequest",
                b'{"status": "FAILED", "statusReason": {"reasonCode": "X", '
                b'"reasonDescription": "a\\nb"}}': "InvalidRequest",
            }
            for body, error in cases.items():
                await dev.send_now(topics.response(ex), body)
                verdict, reply = await _next_reply(replies)
                assert verdict == "rejected", body
                assert reply["executionId"] == ex
                assert reply["error"] == error, body
                assert reply["errorMessage"]
            # A well-formed update with extra keys (as the Java SDK sends) is accepted.
            await dev.send_now(
                topics.response(ex),
                {"status": "SUCCEEDED", "deviceId": "cmd-bad", "executionId": ex},
            )
            assert await _next_reply(replies) == ("accepted", {"executionId": ex})
        async with await _replies(dev, "no-such-execution") as replies:
            await dev.send_now(topics.response("no-such-execution"), {"status": "SUCCEEDED"})
            verdict, reply = await _next_reply(replies)
    assert (verdict, reply["error"]) == ("rejected", "ResourceNotFound")
    assert (await get_execution(cloud, ex, "cmd-bad"))["status"] == "SUCCEEDED"


async def test_content_type_routes_the_request_and_payload_is_raw(cloud: LocalIoTCore) -> None:
    blob = bytes(range(256))
    await create_command(cloud, "firmware", blob, None)  # stored as application/octet-stream
    await create_command(cloud, "text", b"hello", "text/plain")
    await create_command(cloud, "cbor", b"\xa1\x61a\x01", "application/cbor")
    async with device(cloud, "cmd-raw") as dev, Commands(dev, simple=False) as commands:
        ids = [await start(cloud, c, "cmd-raw") for c in ("firmware", "text", "cbor")]
        got = []
        async with asyncio.timeout(10):
            async for execution in commands.executions():
                got.append(execution)
                if len(got) == 3:
                    break
    by_id = {e.execution_id: e for e in got}
    firmware, text, cbor = (by_id[i] for i in ids)
    assert firmware.payload == blob
    assert firmware.topic.endswith(f"/executions/{ids[0]}/request")
    assert text.payload == b"hello"
    assert text.topic.endswith("/request")
    assert cbor.topic.endswith("/request/cbor")
    assert cbor.content_type == "application/cbor"
    assert all(e.scheme is CommandScheme.AWS for e in got)


async def test_mqtt5_request_has_content_type_and_message_expiry(
    cloud_mosquitto: LocalIoTCore,
) -> None:
    cloud = cloud_mosquitto
    await create_command(cloud, "props", {"name": "props"})
    ident = cloud.create_thing("cmd-props")
    from tests.stubs._clients import aiomqtt_device  # noqa: PLC0415

    async with aiomqtt_device(cloud, ident) as client:
        await client.subscribe("$aws/commands/things/cmd-props/executions/+/request/json", qos=1)
        ex = await start(cloud, "props", "cmd-props", timeout_s=30)
        async with asyncio.timeout(10):
            msg: aiomqtt.Message = await anext(aiter(client.messages))
    assert str(msg.topic) == f"$aws/commands/things/cmd-props/executions/{ex}/request/json"
    assert msg.payload == b'{"name": "props"}'
    assert msg.properties is not None
    assert getattr(msg.properties, "ContentType", None) == "application/json"
    assert 28 <= getattr(msg.properties, "MessageExpiryInterval", 0) <= 30


async def test_simple_scheme_round_trip_and_allow_list(cloud: LocalIoTCore) -> None:
    async with device(cloud, "cmd-simple") as dev:
        commands = Commands(dev, aws=False, allow={"set-led"})
        commands.register("set-led", _set_led)
        commands.register("reboot", _set_led)
        async with commands, watcher(cloud, "cmd/cmd-simple/response/+") as peer:
            server = await _serve(commands)

            async def call(name: str, body: bytes) -> Any:
                await peer.publish(f"cmd/cmd-simple/request/{name}", body, qos=1)
                topic, reply = await next_json(peer, "cmd/cmd-simple/response/+")
                assert topic == f"cmd/cmd-simple/response/{name}"
                return reply

            ok = await call("set-led", b'{"correlationId": "c-1", "args": {"color": "blue"}}')
            unknown = await call("dance", b'{"correlationId": "c-2"}')
            blocked = await call("reboot", b'{"correlationId": "c-3", "args": {}}')
            bad_args = await call("set-led", b'{"correlationId": "c-4", "args": [1]}')
            # No correlation id: nobody to answer; logged, the client keeps working.
            await peer.publish("cmd/cmd-simple/request/set-led", b"\x00garbage", qos=1)
            again = await call("set-led", b'{"correlationId": "c-5", "args": {"color": "x"}}')
            server.cancel()
    assert ok == {
        "correlationId": "c-1",
        "status": "SUCCEEDED",
        "result": {"color": "blue", "on": True, "raw": "AQI=", "level": 3},
    }
    assert unknown["status"] == "REJECTED"
    assert unknown["reason"]["code"] == "UNKNOWN_COMMAND"
    assert blocked["reason"]["code"] == "COMMAND_NOT_ALLOWED"
    assert bad_args == {
        "correlationId": "c-4",
        "status": "REJECTED",
        "reason": {"code": "INVALID_PAYLOAD", "description": "args must be a JSON object"},
    }
    assert again["correlationId"] == "c-5"
    assert again["status"] == "SUCCEEDED"
    assert commands.statistics().malformed == 2


async def test_control_plane_validation(cloud: LocalIoTCore) -> None:
    await create_command(cloud, "c1", {"name": "c1"})
    with pytest.raises(ResourceNotFoundError, match="thing"):
        await commands_control(cloud, "start-execution", command_id="c1", thing="nobody")
    cloud.create_thing("cmd-ctl")
    with pytest.raises(ValidationError, match="timeout_s"):
        await commands_control(
            cloud, "start-execution", command_id="c1", thing="cmd-ctl", timeout_s=0
        )
    with pytest.raises(ValidationError, match="timeout_s"):
        await commands_control(
            cloud, "start-execution", command_id="c1", thing="cmd-ctl", timeout_s=43_201
        )
    await commands_control(cloud, "update-command", command_id="c1", deprecated=True)
    with pytest.raises(ValidationError, match="deprecated"):
        await commands_control(cloud, "start-execution", command_id="c1", thing="cmd-ctl")
    listed = await commands_control(cloud, "list-commands")
    assert [c["commandId"] for c in listed["commands"]] == ["c1"]


async def test_persistent_session_gets_the_request_until_the_deadline(
    cloud_mosquitto: LocalIoTCore,
) -> None:
    """§9.11.9: an offline QoS 1 subscriber gets the request on reconnect, unless it expired."""
    cloud = cloud_mosquitto
    ident = cloud.create_thing("cmd-offline")
    await create_command(cloud, "later", {"name": "later"})

    def client() -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 600
        return aiomqtt.Client(
            cloud.endpoint.host,
            cloud.endpoint.port,
            identifier="cmd-offline",
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=tls_context(ident.ca_file, ident.cert_file, ident.key_file),
            clean_start=False,
            properties=props,
        )

    async with client() as c:
        await c.subscribe("$aws/commands/things/cmd-offline/executions/+/request/json", qos=1)
    expiring = await start(cloud, "later", "cmd-offline", timeout_s=1)
    lasting = await start(cloud, "later", "cmd-offline", timeout_s=60)
    await wait_status(cloud, expiring, "cmd-offline", ("TIMED_OUT",))
    await asyncio.sleep(1.1)
    async with client() as c:
        async with asyncio.timeout(10):
            msg = await anext(aiter(c.messages))
        assert str(msg.topic).split("/")[5] == lasting
        extra: aiomqtt.Message | None = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                extra = await anext(aiter(c.messages))
        assert extra is None, f"expired request delivered: {extra.topic}"
