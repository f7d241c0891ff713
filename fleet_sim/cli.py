"""``fleet-sim``: run, validate and report on fleet simulations.

Thin by design: commands parse and validate, then call :func:`fleet_sim.run`. Errors in the
input (scenario, target, options) are one line on stderr and exit code 2; a run that fails
exits with 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from fleet_sim._demo import demo_scenario
from fleet_sim._display import LiveDisplay, PlainDisplay, interactive, print_summary
from fleet_sim._errors import FleetSimError, ReportError, ScenarioError, TargetError
from fleet_sim._model import available_models
from fleet_sim._plan import Shard
from fleet_sim._report import load_report, merge_reports, write_report
from fleet_sim._runner import SimConfig, run
from fleet_sim._scenario import Scenario, TargetSpec, load_scenario

__all__ = ["app", "main"]

app = typer.Typer(
    name="fleet-sim",
    help="Simulate fleets of AWS IoT Core devices (real MQTT connections, real certificates).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
report_app = typer.Typer(help="Work with run reports.", no_args_is_help=True)
app.add_typer(report_app, name="report")

_err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")]
ReportOpt = Annotated[Path | None, typer.Option("--report", help="Write the JSON report here.")]
HtmlOpt = Annotated[Path | None, typer.Option("--html", help="Write the HTML report here.")]
VerboseOpt = Annotated[
    int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv for debug).")
]


def _fail(message: str, code: int = 2) -> NoReturn:
    _err.print(f"fleet-sim: error: {message}", markup=False)
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except ScenarioError as exc:
        _fail(str(exc))
    except (TargetError, ReportError) as exc:
        _fail(str(exc))
    except FleetSimError as exc:
        _fail(str(exc), 1)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}", 1)


def _logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("fleet_sim").setLevel(level)
    if verbose < 2:
        logging.getLogger("fleet_sim.device").setLevel(logging.ERROR)


def _target(
    target: str | None, cert_dir: Path | None, ca_file: Path | None, base: TargetSpec
) -> TargetSpec | None:
    if target is None:
        if cert_dir is not None or ca_file is not None:
            _fail("--cert-dir and --ca-file need --target mqtts://ENDPOINT")
        return None
    if target.startswith(("mqtts://", "iot://")):
        hostport = target.split("://", 1)[1].rstrip("/")
        host, _, port = hostport.partition(":")
        if not host:
            _fail(f"--target {target!r}: no host; use mqtts://xxxx-ats.iot.REGION.amazonaws.com")
        if cert_dir is None:
            _fail(
                "--target with an endpoint needs --cert-dir (one <thing>/cert.pem + key.pem each)"
            )
        try:
            return TargetSpec(
                endpoint=host,
                port=int(port) if port else 8883,
                cert_dir=cert_dir,
                ca_file=ca_file,
                transport=base.transport,
            )
        except ValueError as exc:
            _fail(f"--target {target!r}: {exc}")
    path = target.removeprefix("stub:")
    return TargetSpec(
        state_dir=Path(path),
        start_stub=base.start_stub,
        broker=base.broker,
        transport=base.transport,
    )


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def first_signal() -> None:
        _err.print("stopping: devices drain their outboxes (press Ctrl-C again to abort)")
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, first_signal)


def _execute(config: SimConfig, *, as_json: bool) -> dict[str, Any]:
    console = _err if as_json else Console(highlight=False, soft_wrap=True)
    display = LiveDisplay(console) if interactive(console) else PlainDisplay(console)

    async def go() -> dict[str, Any]:
        stop = asyncio.Event()
        _install_stop(stop)
        with display:
            return await run(config, observer=display, stop=stop)

    with _errors():
        report = asyncio.run(go())
    print_summary(console, report)
    for label, path in (("report", config.report_path), ("HTML report", config.html_path)):
        if path is not None:
            console.print(f"{label}: {path}", markup=False)
    if as_json:
        sys.stdout.write(json.dumps(report, default=str) + "\n")
    return report


@app.command("run")
def run_command(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    devices: Annotated[
        int | None, typer.Option(help="Scale the groups to N devices in total.", min=1)
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Override the duration (wall seconds).", min=0.1)
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(help="A stub state dir (stub:DIR or DIR) or mqtts://ENDPOINT[:PORT]."),
    ] = None,
    cert_dir: Annotated[
        Path | None, typer.Option(help="With an endpoint: <thing>/cert.pem and key.pem.")
    ] = None,
    ca_file: Annotated[Path | None, typer.Option(help="With an endpoint: the CA file.")] = None,
    workers: Annotated[
        int, typer.Option(help="Shard processes on this machine (0: run in this process).", min=0)
    ] = 0,
    shard: Annotated[
        str | None, typer.Option(help="Run only shard INDEX/COUNT (0-based), e.g. 2/8.")
    ] = None,
    run_id: Annotated[
        str | None, typer.Option(envvar="FLEET_SIM_RUN_ID", help="Run id shared by shards.")
    ] = None,
    sink: Annotated[
        bool | None, typer.Option("--sink/--no-sink", help="Count loss (local stub only).")
    ] = None,
    operator: Annotated[
        bool | None,
        typer.Option("--operator/--no-operator", help="Send commands/desired changes (stub)."),
    ] = None,
    report: ReportOpt = None,
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Run SCENARIO with a live progress display; print a summary and write reports."""
    _logging(verbose)
    with _errors():
        parsed = load_scenario(scenario)
    part = None
    if shard is not None:
        try:
            part = Shard.parse(shard)
        except ValueError as exc:
            _fail(str(exc))
        if workers:
            _fail("--shard runs one shard in this process; do not combine it with --workers")
    config = SimConfig(
        parsed,
        devices=devices,
        duration_s=duration,
        target=_target(target, cert_dir, ca_file, parsed.target),
        workers=workers,
        shard=part,
        run_id=run_id,
        sink=sink,
        operator=operator,
        report_path=report,
        html_path=html,
    )
    _execute(config, as_json=as_json)


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="Wall seconds.", min=1)] = 30.0,
    devices: Annotated[int, typer.Option(help="Robots.", min=1, max=10_000)] = 20,
    state_dir: Annotated[
        Path,
        typer.Option(envvar="CLOUD_STUBS_STATE_DIR", help="Local stub state directory."),
    ] = Path(".iot-state"),
    broker: Annotated[str, typer.Option(help="auto | mosquitto | embedded")] = "auto",
    report: ReportOpt = None,
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """A small robot fleet against a local IoT Core (started here if none is running)."""
    _logging(verbose)
    if broker not in ("auto", "mosquitto", "embedded"):
        _fail(f"--broker {broker!r}: choose auto, mosquitto or embedded")
    scenario = demo_scenario(devices, duration, state_dir, broker)
    result = _execute(SimConfig(scenario, report_path=report, html_path=html), as_json=as_json)
    summary = result["summary"]
    sink = summary.get("sink") or {}
    if not summary["messages"]["acked"] or sink.get("lost") or summary["connects"]["failed"]:
        raise typer.Exit(1)


@app.command()
def validate(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check SCENARIO; every problem names the field and the fix."""
    try:
        parsed = load_scenario(scenario)
    except ScenarioError as exc:
        if as_json:
            issues = [
                {"location": i.location, "line": i.line, "message": i.message, "fix": i.fix}
                for i in exc.issues
            ]
            sys.stdout.write(json.dumps({"ok": False, "issues": issues}, indent=2) + "\n")
        _fail(str(exc))
    info = _describe(parsed)
    if as_json:
        sys.stdout.write(json.dumps({"ok": True, **info}, indent=2) + "\n")
    else:
        groups = ", ".join(f"{g['name']} ({g['count']} x {g['model']})" for g in info["groups"])
        print(f"{scenario}: ok — {info['devices']} devices: {groups}")


def _describe(s: Scenario) -> dict[str, Any]:
    return {
        "name": s.name,
        "devices": s.device_count,
        "duration_s": s.duration,
        "groups": [{"name": g.name, "model": g.model, "count": g.count} for g in s.groups],
    }


@app.command()
def models() -> None:
    """List the device models (built in and from the 'fleet_sim.models' entry points)."""
    for name, origin in sorted(available_models().items()):
        print(f"{name}\t{origin}")


@report_app.command("merge")
def report_merge(
    reports: Annotated[list[Path], typer.Argument(help="Shard reports (JSON).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Merged report (JSON).")],
    html: HtmlOpt = None,
    force: Annotated[bool, typer.Option(help="Merge reports of different runs.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Merge shard reports (``--shard i/n`` runs) into one report."""
    with _errors():
        merged = merge_reports([load_report(p) for p in reports], force=force)
        write_report(merged, output)
        if html is not None:
            from fleet_sim._html import write_html  # noqa: PLC0415

            write_html(merged, html)
    console = _err if as_json else Console(highlight=False, soft_wrap=True)
    print_summary(console, merged)
    if as_json:
        sys.stdout.write(json.dumps(merged, default=str) + "\n")


@report_app.command("html")
def report_html(
    report: Annotated[Path, typer.Argument(help="A JSON report.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file.")],
) -> None:
    """Render a JSON report as HTML."""
    from fleet_sim._html import write_html  # noqa: PLC0415

    with _errors():
        write_html(load_report(report), output)


@report_app.command("show")
def report_show(report: Annotated[Path, typer.Argument(help="A JSON report.")]) -> None:
    """Print a report's summary."""
    with _errors():
        data = load_report(report)
    print_summary(Console(highlight=False, soft_wrap=True), data)


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
