"""``cloud-stubs``: run and administer the local IoT Core.

Every subcommand takes ``--state-dir DIR`` (default ``$CLOUD_STUBS_STATE_DIR`` or ``./.iot-state``)
and most take ``--json`` for machine-readable output. Errors are one line on stderr, exit code 2.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from cloud_stubs._cli_commands import commands_app
from cloud_stubs._cli_common import (
    DEFAULT_STATE,
    JsonOpt,
    StateDir,
    emit,
    err_console,
    errors,
    fail,
    out_console,
    print_kv,
)
from cloud_stubs._cli_ota import deployments_app, firmware_app
from cloud_stubs._control import jobs_request, shadow_request
from cloud_stubs._core import LocalIoTCore
from cloud_stubs._demo import run_demo
from cloud_stubs._paths import StatePaths
from cloud_stubs._registry import CertStatus, Registry
from cloud_stubs._state import ensure_state, issue_claim, issue_thing, issue_things, load_ca
from cloud_stubs.broker import BrokerKind
from cloud_stubs.provisioning._store import ProvisioningStore
from cloud_stubs.shadow._topics import ShadowOperation

__all__ = ["app", "main"]

app = typer.Typer(
    name="cloud-stubs",
    help="Local, wire-exact stand-in for AWS IoT Core's device side.",
    no_args_is_help=True,
    add_completion=False,
)
thing_app = typer.Typer(help="Register things and issue their certificates.", no_args_is_help=True)
cert_app = typer.Typer(
    help="Activate, deactivate, revoke and list certificates.", no_args_is_help=True
)
group_app = typer.Typer(help="Static thing groups.", no_args_is_help=True)
app.add_typer(thing_app, name="thing")
app.add_typer(cert_app, name="cert")
app.add_typer(group_app, name="thing-group")
prov_app = typer.Typer(
    help="Fleet provisioning: templates and claim certificates.", no_args_is_help=True
)
template_app = typer.Typer(help="Provisioning templates (AWS template JSON).", no_args_is_help=True)
claim_app = typer.Typer(help="Claim certificates for provisioning by claim.", no_args_is_help=True)
prov_app.add_typer(template_app, name="template")
prov_app.add_typer(claim_app, name="claim")
app.add_typer(prov_app, name="provisioning")
shadow_app = typer.Typer(
    help="Read and change device shadows (classic or named).", no_args_is_help=True
)
app.add_typer(shadow_app, name="shadow")
jobs_app = typer.Typer(
    help="Create and manage jobs (AWS IoT Jobs control plane).", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")
app.add_typer(firmware_app, name="firmware")
app.add_typer(commands_app, name="commands")
app.add_typer(deployments_app, name="deployments")

_err = err_console
_out = out_console
_fail = fail
_errors = errors
_emit = emit


def _registry(state_dir: Path) -> Registry:
    paths = StatePaths.at(state_dir)
    if not paths.ca_cert.exists():
        return ensure_state(paths)
    return Registry(paths)


def _endpoint_fields(state_dir: Path) -> dict[str, Any]:
    """Host/port from endpoint.json when the stub is running."""
    paths = StatePaths.at(state_dir)
    try:
        ep = json.loads(paths.endpoint_file.read_text())
    except (OSError, ValueError):
        return {"host": None, "port": None}
    return {"host": ep.get("host"), "port": ep.get("port")}


# -- up / init / demo ---------------------------------------------------------------------


@app.command()
def init(state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False) -> None:
    """Create the state directory (CA, server and service identities) without starting."""
    with _errors():
        reg = ensure_state(StatePaths.at(state_dir))
        reg.close()
    paths = StatePaths.at(state_dir)
    data = {"state_dir": str(paths.root), "ca_file": str(paths.ca_cert)}
    _emit(as_json, data, lambda: _out.print(f"state directory ready: {paths.root}"))


@app.command()
def up(
    state_dir: StateDir = DEFAULT_STATE,
    port: Annotated[
        int, typer.Option(help="TLS port; 0 picks a free one.", min=0, max=65535)
    ] = 8883,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    broker: Annotated[str, typer.Option(help="auto | mosquitto | embedded")] = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Run the local IoT Core until SIGINT/SIGTERM; writes DIR/endpoint.json when ready."""
    if broker not in ("auto", "mosquitto", "embedded"):
        _fail(f"--broker {broker!r}: choose auto, mosquitto or embedded")
    kind: BrokerKind = broker  # type: ignore[assignment]
    with _errors():
        asyncio.run(_serve(state_dir, host, port, kind, as_json))


async def _serve(state_dir: Path, host: str, port: int, kind: BrokerKind, as_json: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with LocalIoTCore(state_dir, broker=kind, host=host, port=port) as core:
        data = core.endpoint.to_dict()
        if as_json:
            sys.stdout.write(json.dumps(data) + "\n")
            sys.stdout.flush()
        else:
            _out.print(
                f"[bold green]local IoT Core ready[/] on {data['host']}:{data['port']} "
                f"(broker: {data['broker']})\n  CA file:   {data['ca_file']}\n"
                f"  endpoint:  {core.paths.endpoint_file}\n  stop with Ctrl-C"
            )
        await stop.wait()
    if not as_json:
        _out.print("stopped")


@app.command()
def demo(
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="State directory for the demo stub.")
    ] = Path(".demo-state"),
    count: Annotated[
        int, typer.Option(help="Telemetry messages to send.", min=1, max=100_000)
    ] = 10,
    broker: Annotated[str, typer.Option(help="auto | mosquitto | embedded")] = "auto",
) -> None:
    """Start the local IoT Core, connect a device with its own certificate, send telemetry."""
    if broker not in ("auto", "mosquitto", "embedded"):
        _fail(f"--broker {broker!r}: choose auto, mosquitto or embedded")
    with _errors():
        ok = asyncio.run(run_demo(state_dir, count=count, broker=broker, console=_out))  # type: ignore[arg-type]
    if not ok:
        raise typer.Exit(1)


# -- things -------------------------------------------------------------------------------


@thing_app.command("create")
def thing_create(name: str, state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False) -> None:
    """Register a thing and issue its certificate and key (files under DIR/things/NAME)."""
    with _errors():
        reg = _registry(state_dir)
        ident = issue_thing(reg, load_ca(reg.paths), name)
        reg.close()
    data = {**ident.to_dict(), **_endpoint_fields(state_dir)}
    _emit(as_json, data, lambda: _print_kv(data))


@thing_app.command("create-many")
def thing_create_many(
    prefix: Annotated[str, typer.Option(help="Name prefix, e.g. robot-")],
    count: Annotated[int, typer.Option(help="How many things.", min=1, max=100_000)],
    start: Annotated[int, typer.Option(help="First number.", min=0)] = 1,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Register COUNT things named PREFIX<n> with fresh certificates (for the simulator)."""
    names = [f"{prefix}{i}" for i in range(start, start + count)]
    with _errors():
        reg = _registry(state_dir)
        ca = load_ca(reg.paths)
        if as_json:
            idents = issue_things(reg, ca, names)
        else:
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=_err,
            ) as bar:
                task = bar.add_task("issuing certificates", total=len(names))
                idents = issue_things(reg, ca, names, progress=lambda n: bar.advance(task, n))
        reg.close()
    data = {
        "count": len(idents),
        "first": idents[0].thing_name,
        "last": idents[-1].thing_name,
        "things_dir": str(StatePaths.at(state_dir).root / "things"),
        "ca_file": str(StatePaths.at(state_dir).ca_cert),
    }
    _emit(
        as_json,
        data,
        lambda: _out.print(
            f"created {len(idents)} things {data['first']} .. {data['last']}"
            f" in {data['things_dir']}"
        ),
    )


@thing_app.command("list")
def thing_list(
    state_dir: StateDir = DEFAULT_STATE,
    prefix: Annotated[str, typer.Option(help="Only names starting with this.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """List registered things."""
    with _errors():
        reg = _registry(state_dir)
        things = reg.list_things(prefix=prefix)
        data = []
        for t in things:
            certs = reg.certificates_for(t.name)
            data.append({**t.to_dict(), "certificates": [c.to_dict() for c in certs]})
        reg.close()

    def human() -> None:
        table = Table("thing", "certificates (id: status)", "created")
        for d in data:
            cs = ", ".join(f"{c['certificate_id'][:12]}: {c['status']}" for c in d["certificates"])
            table.add_row(d["thing_name"], cs or "-", str(d["created_at"]))
        _out.print(table)

    _emit(as_json, data, human)


@thing_app.command("delete")
def thing_delete(name: str, state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False) -> None:
    """Delete a thing; its certificates are detached and deactivated."""
    with _errors():
        reg = _registry(state_dir)
        reg.delete_thing(name)
        reg.close()
    _emit(as_json, {"deleted": name}, lambda: _out.print(f"deleted {name}"))


# -- certificates -------------------------------------------------------------------------


def _set_status(cert_id: str, status: CertStatus, state_dir: Path, as_json: bool) -> None:
    with _errors():
        reg = _registry(state_dir)
        rec = reg.set_certificate_status(cert_id, status)
        reg.close()
    _emit(
        as_json, rec.to_dict(), lambda: _out.print(f"{rec.certificate_id[:12]} is now {rec.status}")
    )


@cert_app.command("activate")
def cert_activate(
    certificate_id: str, state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False
) -> None:
    """Set a certificate ACTIVE (the id may be a unique prefix of 8+ characters)."""
    _set_status(certificate_id, CertStatus.ACTIVE, state_dir, as_json)


@cert_app.command("deactivate")
def cert_deactivate(
    certificate_id: str, state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False
) -> None:
    """Set a certificate INACTIVE; connected devices using it are disconnected."""
    _set_status(certificate_id, CertStatus.INACTIVE, state_dir, as_json)


@cert_app.command("revoke")
def cert_revoke(
    certificate_id: str, state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False
) -> None:
    """Set a certificate REVOKED (final); connected devices using it are disconnected."""
    _set_status(certificate_id, CertStatus.REVOKED, state_dir, as_json)


@cert_app.command("list")
def cert_list(state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False) -> None:
    """List certificates with their status, role and thing."""
    with _errors():
        reg = _registry(state_dir)
        data = [c.to_dict() for c in reg.list_certificates()]
        reg.close()

    def human() -> None:
        table = Table("certificate id", "status", "role", "thing")
        for d in data:
            table.add_row(d["certificate_id"][:16], d["status"], d["role"], d["thing_name"] or "-")
        _out.print(table)

    _emit(as_json, data, human)


# -- groups -------------------------------------------------------------------------------


@group_app.command("create")
def group_create(name: str, state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False) -> None:
    """Create a static thing group."""
    with _errors():
        reg = _registry(state_dir)
        reg.create_group(name)
        reg.close()
    _emit(as_json, {"group": name}, lambda: _out.print(f"group {name} ready"))


@group_app.command("add")
def group_add(
    name: str,
    things: Annotated[list[str], typer.Argument(help="Thing names to add.")],
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Add things to a static thing group."""
    with _errors():
        reg = _registry(state_dir)
        reg.add_to_group(name, things)
        members = reg.group_members(name)
        reg.close()
    _emit(
        as_json,
        {"group": name, "members": members},
        lambda: _out.print(f"group {name}: {len(members)} things"),
    )


# -- shadows ------------------------------------------------------------------------------

ShadowName = Annotated[str | None, typer.Option("--name", help="Named shadow (default: classic).")]


def _json_arg(option: str, raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        _fail(f'{option}: not valid JSON ({exc}); example: {option} \'{{"color": "red"}}\'')


def _shadow(
    op: ShadowOperation,
    thing: str,
    name: str | None,
    body: dict[str, Any],
    state_dir: Path,
    as_json: bool,
) -> None:
    with _errors():
        reg = _registry(state_dir)
        reg.close()
        try:
            ok, reply = asyncio.run(shadow_request(StatePaths.at(state_dir), op, thing, name, body))
        except TimeoutError:
            _fail("the running stub did not answer within 10 s")
    reply.pop("clientToken", None)
    if as_json:
        sys.stdout.write(json.dumps(reply, indent=2) + "\n")
    else:
        _out.print_json(json.dumps(reply))
    if not ok:
        raise typer.Exit(1)


@shadow_app.command("get")
def shadow_get(
    thing: str,
    name: ShadowName = None,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Print a shadow document (exit 1 when it does not exist)."""
    _shadow(ShadowOperation.GET, thing, name, {}, state_dir, as_json)


@shadow_app.command("update")
def shadow_update(
    thing: str,
    name: ShadowName = None,
    desired: Annotated[str | None, typer.Option(help="JSON object to merge into desired.")] = None,
    reported: Annotated[
        str | None, typer.Option(help="JSON object to merge into reported.")
    ] = None,
    version: Annotated[int | None, typer.Option(help="Expected current version.")] = None,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Update a shadow; devices get /update/delta when desired differs from reported."""
    if desired is None and reported is None:
        _fail("give --desired JSON and/or --reported JSON")
    state: dict[str, Any] = {}
    if desired is not None:
        state["desired"] = _json_arg("--desired", desired)
    if reported is not None:
        state["reported"] = _json_arg("--reported", reported)
    body: dict[str, Any] = {"state": state}
    if version is not None:
        body["version"] = version
    _shadow(ShadowOperation.UPDATE, thing, name, body, state_dir, as_json)


@shadow_app.command("delete")
def shadow_delete(
    thing: str,
    name: ShadowName = None,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Delete a shadow (exit 1 when it does not exist)."""
    _shadow(ShadowOperation.DELETE, thing, name, {}, state_dir, as_json)


# -- jobs ---------------------------------------------------------------------------------


def _jobs(op: str, args: dict[str, Any], state_dir: Path, as_json: bool) -> Any:
    with _errors():
        _registry(state_dir).close()
        try:
            ok, result = asyncio.run(jobs_request(StatePaths.at(state_dir), op, args))
        except TimeoutError:
            _fail("the running stub did not answer within 10 s")
    if not ok:
        _fail(f"jobs {op}: {result.get('message') or result.get('error')}")
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        _out.print_json(json.dumps(result))
    return result


@jobs_app.command("create")
def jobs_create(
    job_id: Annotated[str, typer.Option("--job-id", help="1-64 characters a-z A-Z 0-9 _ -")],
    document: Annotated[Path, typer.Option(help="Job document (JSON file).")],
    thing: Annotated[
        list[str] | None, typer.Option("--thing", help="Target thing (repeat).")
    ] = None,
    group: Annotated[
        list[str] | None, typer.Option("--group", help="Target thing group (repeat).")
    ] = None,
    rollout: Annotated[str | None, typer.Option(help="jobExecutionsRolloutConfig JSON.")] = None,
    abort: Annotated[str | None, typer.Option(help="abortConfig JSON.")] = None,
    retry: Annotated[str | None, typer.Option(help="jobExecutionsRetryConfig JSON.")] = None,
    timeout_minutes: Annotated[
        int | None, typer.Option(help="In-progress timeout (1-10080).", min=1, max=10080)
    ] = None,
    continuous: Annotated[bool, typer.Option(help="CONTINUOUS target selection.")] = False,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Create a job for things and/or thing groups."""
    if not thing and not group:
        _fail("give at least one --thing or --group")
    try:
        doc = json.loads(document.read_text(encoding="utf-8"))
    except OSError as exc:
        _fail(f"{document}: {exc.strerror}")
    except ValueError as exc:
        _fail(f"{document}: not valid JSON ({exc})")
    args: dict[str, Any] = {
        "job_id": job_id,
        "document": doc,
        "things": thing or [],
        "groups": group or [],
        "target_selection": "CONTINUOUS" if continuous else "SNAPSHOT",
        "rollout": _json_arg("--rollout", rollout),
        "abort": _json_arg("--abort", abort),
        "retry": _json_arg("--retry", retry),
        "timeout": {"inProgressTimeoutInMinutes": timeout_minutes} if timeout_minutes else None,
    }
    _jobs("create", args, state_dir, as_json)


@jobs_app.command("describe")
def jobs_describe(
    job_id: str, state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False
) -> None:
    """Describe a job (status, targets, counts)."""
    _jobs("describe", {"job_id": job_id}, state_dir, as_json)


@jobs_app.command("list")
def jobs_list(state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False) -> None:
    """List jobs."""
    _jobs("list", {}, state_dir, as_json)


@jobs_app.command("list-executions")
def jobs_list_executions(
    job_id: Annotated[str | None, typer.Option("--job-id")] = None,
    thing: Annotated[str | None, typer.Option("--thing")] = None,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """List executions of a job (--job-id) or of a thing (--thing)."""
    if (job_id is None) == (thing is None):
        _fail("give exactly one of --job-id or --thing")
    _jobs("list-executions", {"job_id": job_id, "thing": thing}, state_dir, as_json)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: str,
    force: Annotated[bool, typer.Option(help="Also cancel IN_PROGRESS executions.")] = False,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a job (QUEUED executions; with --force also IN_PROGRESS ones)."""
    _jobs("cancel", {"job_id": job_id, "force": force}, state_dir, as_json)


@jobs_app.command("delete")
def jobs_delete(
    job_id: str,
    force: Annotated[bool, typer.Option(help="Delete even if not finished.")] = False,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Delete a job."""
    _jobs("delete", {"job_id": job_id, "force": force}, state_dir, as_json)


# -- provisioning -------------------------------------------------------------------------


@template_app.command("create")
def template_create(
    name: str,
    file: Annotated[Path, typer.Option("--file", help="Template JSON (AWS format).")],
    hook: Annotated[
        str | None,
        typer.Option(help="Pre-provisioning hook as module:function (Python callable)."),
    ] = None,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Create or replace a provisioning template."""
    with _errors():
        try:
            body = json.loads(file.read_text(encoding="utf-8"))
        except ValueError as exc:
            _fail(f"{file}: not valid JSON ({exc})")
        reg = _registry(state_dir)
        reg.close()
        store = ProvisioningStore(StatePaths.at(state_dir))
        tpl = store.put_template(name, body, hook=hook)
        store.close()
    _emit(as_json, tpl.to_dict(), lambda: _out.print(f"template {name} ready"))


@template_app.command("list")
def template_list(state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False) -> None:
    """List provisioning templates."""
    with _errors():
        store = ProvisioningStore(StatePaths.at(state_dir))
        data = [t.to_dict() for t in store.list_templates()]
        store.close()

    def human() -> None:
        for d in data:
            _out.print(f"{d['template_name']}  (hook: {d['hook'] or '-'})")

    _emit(as_json, data, human)


@claim_app.command("create")
def claim_create(
    template: Annotated[str, typer.Option(help="Template the claim is meant for.")],
    name: Annotated[str, typer.Option(help="Name of the claim identity.")] = "claim",
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Issue a claim certificate, limited to the fleet-provisioning topics."""
    with _errors():
        reg = _registry(state_dir)
        store = ProvisioningStore(reg.paths)
        store.get_template(template)
        store.close()
        ident = issue_claim(reg, load_ca(reg.paths), name)
        reg.close()
    data = {**ident.to_dict(), "template": template, **_endpoint_fields(state_dir)}
    data.pop("thing_name", None)
    data["claim_name"] = name
    _emit(as_json, data, lambda: _print_kv(data))


_print_kv = print_kv


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app(standalone_mode=True)
    except SystemExit as exc:
        # typer/click use exit code 2 for usage errors already; keep it.
        raise SystemExit(exc.code) from None
