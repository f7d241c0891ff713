"""``edge-agent``: the command line (``run``, ``check-config``, ``status``, ``provision``).

Thin on purpose: it parses arguments, configures logging and signals, and calls the library
(:class:`edge_agent.Agent`, :func:`edge_agent.load_config`). Errors are one line on stderr.

Exit codes: 0 done, 1 unexpected error, 2 invalid configuration, 3 another agent is running
(or, for ``status``, the agent is not running), 4 no identity, 5 IoT Core refused the
certificate, 6 ``status``: running but not connected.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from edge_agent._config import AgentConfig

__all__ = ["main"]

DEFAULT_CONFIG = "/etc/edge-agent/agent.toml"
EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_RUNNING, EXIT_IDENTITY, EXIT_AUTH, EXIT_DEGRADED = range(7)
_STATUS_TIMEOUT_S = 3.0


def _parser() -> argparse.ArgumentParser:
    from edge_agent._version import __version__  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="edge-agent", description="AWS IoT Core device agent (Raspberry Pi / Greengrass)."
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    default = os.environ.get("EDGE_AGENT_CONFIG", DEFAULT_CONFIG)
    for name, text in (
        ("run", "run the agent until SIGTERM (SIGHUP reloads the configuration)"),
        ("check-config", "validate the configuration file and exit"),
        ("status", "show the running agent's health"),
        ("provision", "provision the device by claim now (first boot), then exit"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument(
            "--config", "-c", default=default, help=f"configuration file (default {default})"
        )
        if name in ("status", "check-config"):
            cmd.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "provision":
            cmd.add_argument(
                "--force", action="store_true", help="provision again even if an identity exists"
            )
    return parser


def _error(message: str) -> None:
    print(f"edge-agent: {message}", file=sys.stderr)


def _load(path: str) -> AgentConfig | None:
    from edge_agent._config import load_config  # noqa: PLC0415
    from edge_agent._errors import ConfigError  # noqa: PLC0415

    try:
        return load_config(path)
    except ConfigError as exc:
        where = f"{exc.path}: " if exc.path else ""
        for problem in exc.problems:
            _error(f"{where}{problem}")
        return None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _exit_code_for(exc: BaseException) -> int:
    from device_sdk import AuthorizationError, DeviceSdkError  # noqa: PLC0415
    from edge_agent._errors import (  # noqa: PLC0415
        AlreadyRunningError,
        ConfigError,
        IdentityError,
    )

    for leaf in _leaves(exc):
        if isinstance(leaf, ConfigError):
            for problem in leaf.problems:
                _error(problem)
            return EXIT_CONFIG
        if isinstance(leaf, AlreadyRunningError):
            _error(str(leaf))
            return EXIT_RUNNING
        if isinstance(leaf, IdentityError):
            _error(str(leaf))
            return EXIT_IDENTITY
        if isinstance(leaf, AuthorizationError):
            _error(f"IoT Core refused the certificate: {leaf}")
            return EXIT_AUTH
        if isinstance(leaf, DeviceSdkError):
            _error(f"{type(leaf).__name__}: {leaf}")
            return EXIT_ERROR
    return -1


async def _run(config: AgentConfig) -> None:
    from edge_agent._agent import Agent  # noqa: PLC0415

    agent = Agent(config)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, functools.partial(agent.request_stop, reason="SIGTERM"))
    loop.add_signal_handler(signal.SIGINT, functools.partial(agent.request_stop, reason="SIGINT"))
    loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
    try:
        await agent.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _cmd_run(config: AgentConfig) -> int:
    from edge_agent._logging import configure_logging  # noqa: PLC0415

    configure_logging(config.logging.level, config.logging.format)
    try:
        asyncio.run(_run(config))
    except (Exception, BaseExceptionGroup) as exc:
        code = _exit_code_for(exc)
        if code >= 0:
            return code
        import logging  # noqa: PLC0415

        logging.getLogger("edge_agent").critical("edge agent failed", exc_info=exc)
        return EXIT_ERROR
    return EXIT_OK


def _cmd_check(config: AgentConfig, *, as_json: bool) -> int:
    from edge_agent._errors import ConfigError  # noqa: PLC0415
    from edge_agent._sources import build_sources  # noqa: PLC0415

    try:
        sources = build_sources(config.telemetry)
    except ConfigError as exc:
        for problem in exc.problems:
            _error(f"{config.source_file}: {problem}")
        return EXIT_CONFIG
    summary = {
        "config": str(config.source_file),
        "state_dir": str(config.state_dir),
        "mode": config.transport.mode,
        "sources": {n: {"interval_s": i, "enabled": e} for n, (_, i, e) in sources.items()},
        "ota": config.ota.installer,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        names = ", ".join(f"{n} every {i:g}s" for n, (_, i, e) in sources.items() if e)
        ota = f"; ota: {config.ota.installer}" if config.ota.enabled else ""
        print(
            f"{config.source_file}: ok ({config.transport.mode}; telemetry: {names or 'none'}{ota})"
        )
    return EXIT_OK


def _fetch_health(url: str) -> tuple[int, dict[str, Any]]:
    import urllib.error  # noqa: PLC0415 - `status` only; the daemon does not need urllib
    import urllib.request  # noqa: PLC0415

    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=_STATUS_TIMEOUT_S) as resp:  # noqa: S310 - our own loopback URL
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")


def _cmd_status(config: AgentConfig, *, as_json: bool) -> int:
    from edge_agent._agent import STATUS_FILE  # noqa: PLC0415
    from edge_agent._lock import lock_is_held, read_lock_owner  # noqa: PLC0415

    running = lock_is_held(config.lock_file)
    doc: dict[str, Any] = {"running": running, "pid": read_lock_owner(config.lock_file)}
    code = EXIT_OK if running else EXIT_RUNNING
    try:
        status_file = json.loads((config.state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        status_file = {}
    url = status_file.get("health_url")
    if running and url:
        try:
            http_status, health = _fetch_health(url)
        except (OSError, ValueError) as exc:
            doc["health_error"] = str(exc)
            code = EXIT_DEGRADED
        else:
            doc["health"] = health
            code = EXIT_OK if http_status == 200 else EXIT_DEGRADED  # noqa: PLR2004
    if as_json:
        print(json.dumps(doc, indent=2))
    elif not running:
        print("edge-agent is not running")
    else:
        health = doc.get("health", {})
        line = f"edge-agent (pid {doc['pid']}) is running"
        if health:
            line += (
                f": {health.get('state', '?')} as {health.get('thing_name', '?')}, "
                f"outbox {health.get('outbox_depth', '?')}, up {health.get('uptime_s', '?')} s"
            )
        elif "health_error" in doc:
            line += f"; health endpoint unreachable: {doc['health_error']}"
        print(line)
    return code


def _cmd_provision(config: AgentConfig, *, force: bool) -> int:
    from edge_agent._identity import provision  # noqa: PLC0415
    from edge_agent._logging import configure_logging  # noqa: PLC0415

    configure_logging(config.logging.level, config.logging.format)
    try:
        identity = asyncio.run(provision(config, force=force))
    except Exception as exc:  # noqa: BLE001 - the CLI boundary
        code = _exit_code_for(exc)
        if code < 0:
            _error(f"provisioning failed: {type(exc).__name__}: {exc}")
            return EXIT_ERROR
        return code
    print(f"provisioned: thing {identity.thing_name}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edge-agent`` (and ``python -m edge_agent``); returns the exit code."""
    args = _parser().parse_args(argv)
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    if args.command == "run":
        return _cmd_run(config)
    if args.command == "check-config":
        return _cmd_check(config, as_json=args.json)
    if args.command == "status":
        return _cmd_status(config, as_json=args.json)
    return _cmd_provision(config, force=args.force)


if __name__ == "__main__":
    sys.exit(main())
