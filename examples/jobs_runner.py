"""A device that runs AWS IoT Jobs with a journaled JobRunner, including a reboot job.

Run against the local IoT Core::

    cloud-stubs up --state-dir state                      # in another terminal
    cloud-stubs thing create robot-1 --state-dir state
    python examples/jobs_runner.py --state-dir state --thing robot-1    # until Ctrl-C

Then give it jobs from another terminal::

    echo '{"operation": "install", "package": "nginx", "version": "1.25"}' > install.json
    cloud-stubs jobs create --job-id install-1 --document install.json --thing robot-1 \\
        --state-dir state
    echo '{"operation": "reboot"}' > reboot.json
    cloud-stubs jobs create --job-id reboot-1 --document reboot.json --thing robot-1 \\
        --state-dir state
    echo '{"operation": "format-disk"}' > bad.json                     # unknown: REJECTED
    cloud-stubs jobs create --job-id bad-1 --document bad.json --thing robot-1 --state-dir state
    cloud-stubs jobs list-executions --thing robot-1 --state-dir state

The reboot job journals "reboot-requested", reports IN_PROGRESS and the script exits with
code 3 (a real device would reboot here). Start the script again: it reads the journal
(``--journal``, default ``robot-1.jobs.json``) and reports the reboot job SUCCEEDED.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from device_sdk import ConnectionOptions, DeviceClient, DeviceIdentity, Endpoint
from device_sdk.jobs import JobContext, JobFailed, JobOutcome, JobRunner, RebootRequested
from device_sdk.transport import TransportKind

REBOOT_EXIT_CODE = 3


def endpoint_for(state_dir: Path) -> tuple[Endpoint, ConnectionOptions, TransportKind]:
    """The stub's endpoint; the embedded broker speaks MQTT 3.1.1 only (paho transport)."""
    path = state_dir / "endpoint.json"
    if not path.exists():
        raise SystemExit(f"{path} not found: start 'cloud-stubs up --state-dir {state_dir}'")
    if json.loads(path.read_text()).get("broker") == "embedded":
        return Endpoint.from_json_file(path), ConnectionOptions(mqtt_version=3), "paho"
    return Endpoint.from_json_file(path), ConnectionOptions(), "auto"


async def install(ctx: JobContext) -> dict[str, str]:
    """Pretend to download and install a package, reporting progress."""
    package = ctx.document.get("package")
    if not isinstance(package, str):
        raise JobFailed("document has no 'package'")
    for pct in (25, 50, 75, 100):
        await asyncio.sleep(0.3)
        await ctx.progress({"step": "download", "progress": f"{pct}%"})
    print(f"job {ctx.job_id}: installed {package} {ctx.document.get('version', '')}")
    return {"installed": package}


async def reboot(ctx: JobContext) -> RebootRequested:
    """Ask the runner to journal a reboot; it completes after the restart."""
    print(f"job {ctx.job_id}: reboot requested")
    return RebootRequested({"reason": "requested by job"}, step_timeout_minutes=10)


async def print_outcomes(runner: JobRunner) -> None:
    async with runner.outcomes() as outcomes:
        async for outcome in outcomes:
            print(f"job {outcome.job_id}: {outcome.status} {outcome.status_details}")


async def main(args: argparse.Namespace) -> int:
    state: Path = args.state_dir
    endpoint, options, transport = endpoint_for(state)
    thing_dir = state / "things" / args.thing
    identity = DeviceIdentity.from_files(
        thing_dir / "cert.pem", thing_dir / "key.pem", endpoint.ca_file, thing_name=args.thing
    )
    journal = args.journal or Path(f"{args.thing}.jobs.json")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with DeviceClient(identity, endpoint, transport=transport, options=options) as device:
        runner = JobRunner(device, {"install": install, "reboot": reboot}, journal_path=journal)
        async with asyncio.TaskGroup() as tg:
            printer = tg.create_task(print_outcomes(runner), name="example.jobs.outcomes")
            run = tg.create_task(runner.run(), name="example.jobs.run")
            stopper = tg.create_task(stop.wait(), name="example.jobs.stop")
            print(f"{args.thing}: waiting for jobs (Ctrl-C to stop)", flush=True)
            await asyncio.wait({run, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (run, stopper, printer):
                task.cancel()
        outcome: JobOutcome | None = None if run.cancelled() else run.result()
    if outcome is not None and outcome.reboot_requested:
        print(f"job {outcome.job_id} asked for a reboot: run me again to finish it")
        return REBOOT_EXIT_CODE
    print("stopped")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=Path(".iot-state"))
    parser.add_argument("--thing", default="robot-1")
    parser.add_argument("--journal", type=Path, default=None, help="job journal (JSON)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(parser.parse_args())))
