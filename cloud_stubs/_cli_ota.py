"""``cloud-stubs firmware`` and ``cloud-stubs deployments``: the OTA side of the CLI.

Mounted by :mod:`cloud_stubs.cli`. Same conventions: ``--state-dir DIR``, ``--json``, errors
are one line on stderr with exit code 2. Neither group needs a running stub: the firmware store,
its counters and faults, and the deployments are SQLite under ``DIR``; the running stub's file
server and deployment engine pick changes up live.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

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
from cloud_stubs._paths import StatePaths
from cloud_stubs.deployments import (
    Deployment,
    DeploymentStore,
    cancel_deployment,
    create_deployment,
)
from cloud_stubs.firmware import (
    DownloadCounters,
    FirmwareStore,
    OtaPaths,
    Presigner,
    ensure_signing_key,
)
from cloud_stubs.firmware._presign import ensure_url_secret

__all__ = ["deployments_app", "firmware_app"]

firmware_app = typer.Typer(
    help="Firmware images for OTA: upload (hash + sign), list, download counters, faults.",
    no_args_is_help=True,
)
fault_app = typer.Typer(
    help="Arm faults in the firmware file server (for device OTA tests).", no_args_is_help=True
)
firmware_app.add_typer(fault_app, name="fault")
deployments_app = typer.Typer(
    help="Roll firmware out in batches gated by a success threshold.", no_args_is_help=True
)

_err = err_console
_out = out_console
_fail = fail
_errors = errors
_emit = emit
_print_kv = print_kv


def _paths(state_dir: Path) -> StatePaths:
    return StatePaths.at(state_dir)


# -- firmware ---------------------------------------------------------------------------------


@firmware_app.command("upload")
def firmware_upload(
    file: Annotated[Path, typer.Argument(help="The firmware image.")],
    version: Annotated[str, typer.Option("--version", help="Version the image installs.")],
    device_type: Annotated[str, typer.Option("--device-type", help="Device type it is for.")],
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Store an image: SHA-256, ECDSA P-256 signature with the stub's code-signing key."""
    with _errors(), FirmwareStore(_paths(state_dir)) as store:
        manifest = store.upload(file, version=version, device_type=device_type)
    data = manifest.to_dict()
    _emit(as_json, data, lambda: _print_kv(data))


@firmware_app.command("list")
def firmware_list(state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False) -> None:
    """List stored firmware."""
    with _errors(), FirmwareStore(_paths(state_dir)) as store:
        items = store.list_firmware()
    data = [m.to_dict() for m in items]

    def human() -> None:
        table = Table("firmware id", "device type", "version", "size", "sha256", "created")
        for m in items:
            table.add_row(
                m.firmware_id,
                m.device_type,
                m.version,
                str(m.size),
                m.sha256[:16],
                str(m.created_at),
            )
        _out.print(table)

    _emit(as_json, data, human)


@firmware_app.command("describe")
def firmware_describe(
    firmware_id: str, state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False
) -> None:
    """Show a firmware's manifest and its download counters."""
    with _errors(), FirmwareStore(_paths(state_dir)) as store:
        manifest = store.get(firmware_id)
        totals = store.download_totals(firmware_id)
        per_thing = store.downloads(firmware_id)
    data = {
        **manifest.to_dict(),
        "file": str(OtaPaths.of(_paths(state_dir)).image_file(firmware_id)),
        "downloads": totals.to_dict(),
        "downloads_by_thing": [c.to_dict() for c in per_thing],
    }

    def human() -> None:
        _print_kv({k: v for k, v in data.items() if not k.startswith("downloads")})
        _out.print()
        _counters_table([totals, *per_thing])

    _emit(as_json, data, human)


@firmware_app.command("public-key")
def firmware_public_key(
    out: Annotated[Path | None, typer.Option("--out", help="Also write the PEM here.")] = None,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Print the code-signing public key devices trust (created on first use)."""
    paths = OtaPaths.of(_paths(state_dir))
    with _errors():
        key = ensure_signing_key(paths)
        pem = key.public_key_pem()
        if out is not None:
            out.write_bytes(pem)
    data = {
        "key_id": key.key_id,
        "sig_alg": "ecdsa-p256-sha256",
        "public_key_file": str(paths.signing_pub),
        "public_key_pem": pem.decode(),
    }
    _emit(as_json, data, lambda: sys.stdout.write(pem.decode()))


@firmware_app.command("url")
def firmware_url(
    firmware_id: str,
    thing: Annotated[str | None, typer.Option(help="Label the download counters.")] = None,
    expires_in: Annotated[
        int | None, typer.Option("--expires-in", help="Seconds (default: the server's).")
    ] = None,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """A presigned download URL for the file server of the running stub."""
    paths = OtaPaths.of(_paths(state_dir))
    if expires_in is not None and expires_in < 1:
        _fail("--expires-in must be at least 1 second")
    with _errors():
        with FirmwareStore(paths) as store:
            store.get(firmware_id)
        try:
            info = json.loads(paths.server_file.read_text())
        except (OSError, ValueError):
            _fail(f"no firmware server has run in {paths.state.root}: start 'cloud-stubs up'")
        secret = ensure_url_secret(paths)
        ttl = expires_in or int(info.get("url_ttl_s", 3600))
        now = time.time()
        url = Presigner(str(info["base_url"]), secret, ttl).url(firmware_id, now, thing=thing)
    data = {
        "url": url,
        "expires": int(now) + ttl,
        "server_running": bool(info.get("running")),
        "ca_file": str(paths.state.ca_cert) if str(info["base_url"]).startswith("https") else None,
    }
    _emit(as_json, data, lambda: sys.stdout.write(url + "\n"))


def _counters_table(rows: list[DownloadCounters]) -> None:
    table = Table("firmware", "thing", "requests", "bytes", "200", "206", "403", "404", "416")
    for c in rows:
        table.add_row(
            c.firmware_id,
            c.thing,
            str(c.requests),
            str(c.bytes_served),
            str(c.status_200),
            str(c.status_206),
            str(c.status_403),
            str(c.status_404),
            str(c.status_416),
        )
    _out.print(table)


@firmware_app.command("downloads")
def firmware_downloads(
    firmware_id: Annotated[str | None, typer.Option("--firmware", help="One firmware.")] = None,
    thing: Annotated[str | None, typer.Option("--thing", help="One thing.")] = None,
    reset: Annotated[bool, typer.Option(help="Forget the counters shown.")] = False,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Download counters per firmware and thing (requests, bytes, 200/206/403/404/416)."""
    with _errors(), FirmwareStore(_paths(state_dir)) as store:
        rows = store.downloads(firmware_id, thing)
        if reset:
            if thing is not None:
                _fail("--reset works per firmware (or all), not per thing")
            store.reset_downloads(firmware_id)
    _emit(as_json, [c.to_dict() for c in rows], lambda: _counters_table(rows))


@fault_app.command("add")
def fault_add(
    spec: Annotated[
        str,
        typer.Argument(
            help="expired_403 | status:<code> | ignore_range | drop_after:<bytes> | "
            "corrupt:<offset> | throttle:<bps> | delay:<seconds>"
        ),
    ],
    firmware_id: Annotated[str | None, typer.Option("--firmware", help="Only this one.")] = None,
    thing: Annotated[str | None, typer.Option("--thing", help="Only URLs for this thing.")] = None,
    times: Annotated[int, typer.Option(help="Requests it breaks.")] = 1,
    always: Annotated[bool, typer.Option(help="Break every request until cleared.")] = False,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Arm a fault for the next matching request(s); a running server applies it live."""
    with _errors(), FirmwareStore(_paths(state_dir)) as store:
        if firmware_id is not None:
            store.get(firmware_id)
        rule = store.add_fault(
            spec, firmware_id=firmware_id, thing=thing, times=None if always else times
        )
    data = rule.to_dict()
    _emit(as_json, data, lambda: _out.print(f"armed fault {rule.rule_id}: {rule.spec}"))


@fault_app.command("list")
def fault_list(state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False) -> None:
    """List armed faults (with how often they fired)."""
    with _errors(), FirmwareStore(_paths(state_dir)) as store:
        rules = store.faults()
    data = [r.to_dict() for r in rules]

    def human() -> None:
        table = Table("id", "spec", "firmware", "thing", "remaining", "fired")
        for r in rules:
            remaining = "always" if r.remaining is None else str(r.remaining)
            table.add_row(
                str(r.rule_id),
                str(r.spec),
                r.firmware_id or "*",
                r.thing or "*",
                remaining,
                str(r.fired),
            )
        _out.print(table)

    _emit(as_json, data, human)


@fault_app.command("clear")
def fault_clear(state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False) -> None:
    """Disarm every fault."""
    with _errors(), FirmwareStore(_paths(state_dir)) as store:
        n = store.clear_faults()
    _emit(as_json, {"cleared": n}, lambda: _out.print(f"cleared {n} fault(s)"))


# -- deployments ------------------------------------------------------------------------------


def _batches_table(dep: Deployment) -> None:
    table = Table(
        "batch", "status", "job", "total", "succeeded", "failed", "in progress", "pending"
    )
    for b in dep.batches:
        c = b.current_counts
        table.add_row(
            str(b.index),
            b.status.value,
            b.job_id or "-",
            str(c.total),
            str(c.succeeded),
            str(c.failed),
            str(c.in_progress),
            str(c.pending),
        )
    _out.print(table)


def _describe_human(dep: Deployment) -> None:
    totals = dep.totals()
    _print_kv(
        {
            "deployment_id": dep.deployment_id,
            "status": dep.status.value,
            "firmware": f"{dep.firmware_id} ({dep.target_version})",
            "batches": f"{len(dep.batches)} of up to {dep.batch_size} things",
            "success_threshold": f"{dep.success_threshold:g}",
            "things": f"{totals.total}: {totals.succeeded} succeeded, {totals.failed} failed, "
            f"{totals.in_progress} in progress, {totals.pending} pending",
        }
    )
    if dep.reason:
        _out.print(f"reason  {dep.reason}", markup=False)
    _batches_table(dep)


def _json_option(option: str, raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        _fail(f"{option}: not valid JSON ({exc})")


@deployments_app.command("create")
def deployments_create(
    firmware_id: Annotated[str, typer.Option("--firmware", help="Firmware id (fw-...).")],
    batch_size: Annotated[int, typer.Option("--batch-size", help="Things per batch.")],
    success_threshold: Annotated[
        float,
        typer.Option("--success-threshold", help="Fraction of a batch that must succeed (0-1)."),
    ] = 1.0,
    thing: Annotated[
        list[str] | None, typer.Option("--thing", help="Target thing (repeat).")
    ] = None,
    group: Annotated[
        list[str] | None, typer.Option("--group", help="Target thing group (repeat).")
    ] = None,
    timeout_minutes: Annotated[
        int | None,
        typer.Option("--timeout-minutes", help="In-progress timeout of executions (1-10080)."),
    ] = None,
    batch_timeout: Annotated[
        float | None,
        typer.Option("--batch-timeout", help="Seconds before a batch is decided on its successes."),
    ] = None,
    max_per_minute: Annotated[
        int | None, typer.Option("--max-per-minute", help="Rollout rate of each batch job.")
    ] = None,
    abort: Annotated[
        bool, typer.Option(help="Give batch jobs an abortConfig matching the threshold.")
    ] = True,
    policy: Annotated[
        str | None, typer.Option(help='Install policy JSON, e.g. \'{"reboot": "defer"}\'.')
    ] = None,
    test_faults: Annotated[
        str | None,
        typer.Option(
            "--test-faults", help="test.faults JSON list, e.g. '[\"download.at_bytes:4096\"]'."
        ),
    ] = None,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Create a deployment; the running stub starts it (batch by batch) within a second."""
    if not thing and not group:
        _fail("give at least one --thing or --group")
    if not 0 <= success_threshold <= 1:
        _fail(f"--success-threshold must be between 0 and 1, not {success_threshold:g}")
    policy_obj = _json_option("--policy", policy)
    faults = _json_option("--test-faults", test_faults)
    if faults is not None and not isinstance(faults, list):
        _fail("--test-faults must be a JSON list of strings, e.g. '[\"download.at_bytes:4096\"]'")
    with _errors():
        dep = create_deployment(
            _paths(state_dir),
            firmware_id=firmware_id,
            things=thing or [],
            groups=group or [],
            batch_size=batch_size,
            success_threshold=success_threshold,
            timeout_minutes=timeout_minutes,
            batch_timeout_s=batch_timeout,
            max_per_minute=max_per_minute,
            abort_on_threshold=abort,
            policy=policy_obj,
            test_faults=faults,
        )
    _emit(as_json, dep.to_json(), lambda: _describe_human(dep))


@deployments_app.command("describe")
def deployments_describe(
    deployment_id: str, state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False
) -> None:
    """Show a deployment: status, reason, per batch total/succeeded/failed/in progress/pending."""
    with _errors(), DeploymentStore(_paths(state_dir)) as store:
        dep = store.get(deployment_id)
    _emit(as_json, dep.to_json(), lambda: _describe_human(dep))


@deployments_app.command("list")
def deployments_list(state_dir: StateDir = DEFAULT_STATE, as_json: JsonOpt = False) -> None:
    """List deployments, oldest first."""
    with _errors(), DeploymentStore(_paths(state_dir)) as store:
        deps = store.list_deployments()
    data = [
        {
            "deployment_id": d.deployment_id,
            "status": d.status.value,
            "firmware_id": d.firmware_id,
            "target_version": d.target_version,
            "batches": len(d.batches),
            "totals": d.totals().to_json(),
            "reason": d.reason,
            "created_at": d.created_at,
        }
        for d in deps
    ]

    def human() -> None:
        table = Table(
            "deployment", "status", "firmware", "version", "things", "succeeded", "failed"
        )
        for d in deps:
            t = d.totals()
            table.add_row(
                d.deployment_id,
                d.status.value,
                d.firmware_id,
                d.target_version,
                str(t.total),
                str(t.succeeded),
                str(t.failed),
            )
        _out.print(table)

    _emit(as_json, data, human)


@deployments_app.command("cancel")
def deployments_cancel(
    deployment_id: str,
    reason: Annotated[str, typer.Option(help="Recorded as the reason.")] = (
        "canceled by the operator"
    ),
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a deployment: its running batch job is canceled, later batches never start."""
    with _errors():
        dep = cancel_deployment(_paths(state_dir), deployment_id, reason=reason)
    _emit(
        as_json,
        dep.to_json(),
        lambda: _out.print(
            f"{deployment_id}: {dep.status.value}"
            + ("" if dep.status.is_terminal else " (cancel requested; the running stub applies it)")
        ),
    )


@deployments_app.command("wait")
def deployments_wait(
    deployment_id: str,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 600.0,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Wait until a deployment finishes; exit 0 if COMPLETED, 1 if FAILED or CANCELED."""

    async def poll() -> Deployment:
        with DeploymentStore(_paths(state_dir)) as store:
            async with asyncio.timeout(timeout):
                while True:
                    dep = store.get(deployment_id)
                    if dep.status.is_terminal:
                        return dep
                    await asyncio.sleep(0.2)

    with _errors():
        try:
            dep = asyncio.run(poll())
        except TimeoutError:
            _fail(f"{deployment_id} did not finish within {timeout:g} s")
    _emit(as_json, dep.to_json(), lambda: _describe_human(dep))
    if dep.status.value != "COMPLETED":
        raise typer.Exit(1)
