"""``OtaAgent``: the persisted OTA state machine (ota.md §11.2) driving an installer.

``await agent.run(job_id, execution_number, document, reporter)`` walks::

    RECEIVED -> VALIDATED -> DOWNLOADING -> DOWNLOADED -> VERIFIED -> INSTALLING -> INSTALLED
      -> [REBOOTING ->] TRIAL_BOOT -> HEALTH_CHECK -> COMMITTING -> COMMITTED
    failures: -> REJECTED (nothing activated) | -> FAILED | after activation:
              -> ROLLING_BACK -> ROLLED_BACK -> FAILED

The record is saved (atomically, fsynced) *before* each state's work, and each state's work
is idempotent, so a crash anywhere re-enters the saved state. ``REBOOTING`` returns an
:class:`OtaResult` with ``outcome="reboot"``; the next :class:`OtaAgent` instance (a new
``boot_id``: a new process is a new boot) continues with ``TRIAL_BOOT``. ``SUCCEEDED`` is only
ever derived from ``COMMITTED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, Protocol, TypeVar

from device_sdk.ota._document import OtaDocument, check_document, parse_document, verify_signature
from device_sdk.ota._download import AttemptStatus, Downloader
from device_sdk.ota._errors import OtaError, OtaFailedError, OtaRejectedError, ReasonCode
from device_sdk.ota._faults import FaultInjector, FaultPlan, Fired
from device_sdk.ota._health import HealthCheck, run_health_checks
from device_sdk.ota._installer import Installer
from device_sdk.ota._journal import OtaJournal, OtaRecord, OtaState

__all__ = ["AGENT_VERSION", "OtaAgent", "OtaConfig", "OtaResult", "StatusReporter"]

AGENT_VERSION = "device_sdk.ota/1"
T = TypeVar("T")
S = OtaState

#: States after which the installer may have switched the boot pointer: failures roll back.
_ACTIVATED = frozenset({S.INSTALLED, S.REBOOTING, S.TRIAL_BOOT, S.HEALTH_CHECK, S.COMMITTING})
_BEFORE_INSTALL = frozenset({S.RECEIVED, S.VALIDATED, S.DOWNLOADING, S.DOWNLOADED, S.VERIFIED})
_MAX_DETAIL = 1000
#: statusDetails entries the agent sends (IoT Jobs allows 10; the runner adds ``reason``).
MAX_DETAILS = 9


class StatusReporter(Protocol):
    """How the agent talks to the job execution (the JobRunner adapter implements it)."""

    async def report(self, details: Mapping[str, str], *, must_succeed: bool = False) -> bool:
        """Report ``IN_PROGRESS`` with ``details``; whether the service accepted it.

        Best effort unless ``must_succeed`` (the built-in health check), which waits for
        the answer. Never raises for network or service errors.
        """
        ...

    async def fresh_document(self) -> Any:
        """Describe the execution again; its job document carries a fresh URL."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class OtaConfig:
    """Device-side OTA settings.

    Attributes:
        device_type: This device's type (documents for others are REJECTED).
        trusted_keys: Pinned code-signing public keys, key id -> PEM.
        state_dir: Where the journal, fault counters and download bookkeeping live.
        ca_file: CA bundle for HTTPS downloads (``None``: system trust store).
        health_checks: Checks run during the trial boot (plus the built-in report check).
        fault_plan: Armed faults (``None``: read ``fault_file`` if given).
        fault_file: JSON fault plan armed on the bench (read at agent start).
        test_mode: Honour ``test.faults`` of job documents.
        request_timeout_s: Connect/read timeout of one HTTP request.
        download_timeout_s: Limit of the whole download stage.
        install_timeout_s: Limit of install, activate, commit and rollback calls.
        max_download_attempts: Failed requests (drops, 5xx) tolerated before FAILED.
        max_url_refreshes: 403s answered with a fresh URL before FAILED.
        max_reentries: Restarts into a non-terminal state before FAILED(STATE_LOOP).
        progress_interval_s: Minimum time between download progress reports.
        retry_delay_s: Pause before resuming a dropped download.
        builtin_report_check: Add the "reconnect + report" required health check.
    """

    device_type: str
    trusted_keys: Mapping[str, bytes]
    state_dir: Path
    ca_file: Path | None = None
    health_checks: Sequence[HealthCheck] = ()
    fault_plan: FaultPlan | None = None
    fault_file: Path | None = None
    test_mode: bool = False
    request_timeout_s: float = 30.0
    download_timeout_s: float = 3600.0
    install_timeout_s: float = 600.0
    max_download_attempts: int = 5
    max_url_refreshes: int = 3
    max_reentries: int = 28
    progress_interval_s: float = 2.0
    retry_delay_s: float = 0.2
    builtin_report_check: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class OtaResult:
    """How :meth:`OtaAgent.run` ended.

    Attributes:
        outcome: ``succeeded`` (COMMITTED), ``rejected``, ``failed``, or ``reboot`` (the
            device must restart; run the same job again afterwards).
        state: The final state.
        details: ``statusDetails`` to report with the terminal status.
        reason_code: For rejected/failed.
        detail: Longer reason.
    """

    outcome: Literal["succeeded", "rejected", "failed", "reboot"]
    state: OtaState
    details: dict[str, str]
    reason_code: str | None = None
    detail: str | None = None


class _Jump(Exception):  # noqa: N818 - internal control flow
    def __init__(self, state: OtaState) -> None:
        super().__init__(state)
        self.state = state


class OtaAgent:
    """Runs OTA jobs on one device.

    Args:
        installer: The update backend.
        config: Settings.
        boot_id: Identifies this boot (default: new per agent instance, so a restarted
            process counts as rebooted). Pass ``/proc/sys/kernel/random/boot_id`` on a device
            whose installer needs a real reboot.
        crash: The ``crash`` fault action (default ``os._exit``).
        disconnect: Drops the device's MQTT connection (the ``mqtt.disconnect`` fault; the
            client reconnects by itself). Without it that fault is only recorded.
        logger: Logger.
    """

    def __init__(
        self,
        installer: Installer,
        config: OtaConfig,
        *,
        boot_id: str | None = None,
        crash: Callable[[], NoReturn] | None = None,
        disconnect: Callable[[], Awaitable[None]] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.installer = installer
        self.disconnect = disconnect
        self.config = config
        self.boot_id = boot_id or uuid.uuid4().hex[:12]
        self.journal = OtaJournal(config.state_dir)
        self._log = logger or logging.getLogger(__name__)
        plan = config.fault_plan
        if plan is None and config.fault_file is not None:
            plan = FaultPlan.from_file(config.fault_file)
        extra: dict[str, Any] = {} if crash is None else {"crash": crash}
        self.faults = FaultInjector(
            plan,
            counters_file=Path(config.state_dir) / "ota-faults.json",
            on_fire=self._fired,
            **extra,
        )
        self._record: OtaRecord | None = None
        self._reporter: StatusReporter | None = None
        self._last_fault: str | None = None

    # -- journal helpers ------------------------------------------------------------------

    def _fired(self, fired: Fired) -> None:
        self._last_fault = str(fired)
        rec = self._record
        if rec is not None:
            rec.faults_fired.append(str(fired))
            self.journal.save(rec, event="fault", fault=str(fired))

    def _save(self, event: str = "state", **extra: Any) -> None:
        assert self._record is not None  # noqa: S101 - set by run()
        self._record.boot_id = self.boot_id
        self.journal.save(self._record, event=event, **extra)

    def details(self, rec: OtaRecord | None = None) -> dict[str, str]:
        """The statusDetails map of the current record.

        String values only, at most :data:`MAX_DETAILS` entries (IoT Jobs allows 10; one is
        left for the runner's ``reason``), most important first.
        """
        rec = rec or self._record
        if rec is None:
            return {}
        out = {
            "state": rec.state.value,
            "progress": f"{rec.offset}/{rec.total}",
            "attempt": str(rec.attempt),
        }
        if rec.reason_code:
            out["reason_code"] = rec.reason_code
            with contextlib.suppress(ValueError):
                out["error_type"] = OtaError(rec.reason_code).error_type.value
        if rec.detail and rec.reason_code:
            out["error_detail"] = rec.detail[:_MAX_DETAIL]
        if rec.faults_fired:
            out["fault_fired"] = rec.faults_fired[-1][:_MAX_DETAIL]
        if rec.target_version:
            out["target_version"] = rec.target_version
        running = self.installer.current_version()
        if running and self._inject("report.version_mismatch"):
            other = rec.target_version if running != rec.target_version else rec.previous_version
            running = other if other and other != running else f"{running}+mismatch"
        if running:
            out["running_version"] = running
        out["transaction_id"] = rec.transaction_id
        out["boot_attempts"] = str(rec.boot_attempts)
        out["boot_id"] = self.boot_id
        out["agent_version"] = AGENT_VERSION
        return dict(list(out.items())[:MAX_DETAILS])

    async def _report(self, *, must_succeed: bool = False, live_offset: int | None = None) -> bool:
        rec, reporter = self._record, self._reporter
        if rec is None or reporter is None:
            return False
        fired = self.faults.check(f"report.drop:{rec.state.value}")
        if fired is not None and fired.kind == "drop":
            return False
        details = self.details()
        if live_offset is not None:
            details["progress"] = f"{live_offset}/{rec.total}"
        accepted = await self._send(reporter, details, must_succeed=must_succeed)
        if await self._effect("report.duplicate"):  # the same report once more
            accepted = await self._send(reporter, details, must_succeed=must_succeed) and accepted
        return accepted

    async def _send(
        self, reporter: StatusReporter, details: dict[str, str], *, must_succeed: bool
    ) -> bool:
        try:
            return await reporter.report(details, must_succeed=must_succeed)
        except Exception as exc:  # noqa: BLE001 - reporting is best effort
            self._log.warning("ota: status report failed: %r", exc)
            return False

    async def _enter(self, state: OtaState, *, report: bool = True) -> None:
        rec = self._record
        assert rec is not None  # noqa: S101
        rec.state = state
        rec.seq += 1
        self._save()
        self._log.info("ota %s: %s", rec.job_id, state)
        if report and state not in (S.COMMITTED, S.REJECTED, S.FAILED, S.CANCELED):
            await self._report()

    # -- effect faults (``inject``) ---------------------------------------------------------

    def _inject(self, point: str) -> bool:
        """Pass an effect point synchronously: whether an ``inject`` rule fired there.

        Only ``inject`` acts here (``report.version_mismatch`` is passed while building
        statusDetails, where raising or crashing is not supported).
        """
        if not self.faults.armed_at(point):
            return False
        fired = self.faults.check(point)
        return fired is not None and fired.kind == "inject"

    async def _effect(self, point: str) -> bool:
        """Pass an effect point (raise/crash/hang/delay act): whether to carry it out."""
        if not self.faults.armed_at(point):
            return False
        fired = await self.faults.hit(point)
        return fired is not None and fired.kind == "inject"

    async def _skew_clock(self) -> None:
        for point in self.faults.points("clock.skew:"):
            if await self._effect(point):
                try:
                    self.journal.clock_offset_s = float(point.partition(":")[2])
                except ValueError:
                    self._log.warning("ota: %s: not a number of seconds", point)

    async def _maybe_disconnect(self) -> None:
        if await self._effect("mqtt.disconnect"):
            if self.disconnect is None:
                self._log.warning("ota: mqtt.disconnect fired but the agent has no hook")
                return
            await self.disconnect()

    async def _no_space(self) -> None:
        if await self._effect("disk.enospc"):
            raise OSError(errno.ENOSPC, "No space left on device (injected disk.enospc)")

    # -- entry point ----------------------------------------------------------------------

    def _start_record(self, job_id: str, execution_number: int | None) -> tuple[OtaRecord, bool]:
        """The record to run and whether it resumes an interrupted run."""
        old = self.journal.load()
        if old is not None and old.job_id == job_id and old.execution_number == execution_number:
            return old, not old.terminal
        rec = OtaRecord(job_id=job_id, execution_number=execution_number, boot_id=self.boot_id)
        return rec, False

    async def run(
        self,
        job_id: str,
        execution_number: int | None,
        document: Any,
        reporter: StatusReporter,
        *,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> OtaResult:
        """Run (or resume) the update of one job execution until it ends or needs a reboot."""
        stale = self.journal.load()
        if stale is not None and not stale.terminal and stale.job_id != job_id:
            await self._abandon(stale)
        rec, resumed = self._start_record(job_id, execution_number)
        self._record, self._reporter = rec, reporter
        if resumed:
            if rec.state is S.HEALTH_CHECK and rec.boot_id != self.boot_id:
                rec.state = S.TRIAL_BOOT  # rebooted during the trial: another trial boot
            rec.reentries += 1
            self._save("resume")
            if rec.reentries > self.config.max_reentries:
                return await self._finish_failure(
                    OtaFailedError(
                        ReasonCode.STATE_LOOP, f"{rec.reentries} restarts in {rec.state}"
                    )
                )
        if rec.terminal:
            return self._result()
        if not resumed:
            self._save("start")
        await self._skew_clock()
        if self.config.test_mode and isinstance(document, Mapping):
            specs = (document.get("test") or {}).get("faults") or []
            if specs and not self.faults.armed:
                self.faults.plan = FaultPlan.from_strings(list(specs))
        try:
            return await self._walk(document, cancelled)
        except asyncio.CancelledError:
            if cancelled():
                await asyncio.shield(self._cancel_cleanup())
            raise

    async def _walk(self, raw: Any, cancelled: Callable[[], bool]) -> OtaResult:
        rec = self._record
        assert rec is not None  # noqa: S101
        doc: OtaDocument | None = None
        for _ in range(64):  # transitions per run; more is a bug: STATE_LOOP
            state = rec.state
            if rec.terminal:
                if state is S.COMMITTED:
                    with contextlib.suppress(OtaError):
                        await self.faults.hit("commit.after_flag_before_report")
                return self._result()
            try:
                await self.faults.hit(f"state.{state.value}")
                await self._maybe_disconnect()
                if doc is None and state is not S.RECEIVED:
                    doc = parse_document(raw)  # validated before; parse again after restart
                nxt = await self._step(state, raw, doc)
                if isinstance(nxt, OtaResult):
                    return nxt
                if nxt is S.VALIDATED and doc is None:
                    doc = parse_document(raw)
                await self._enter(nxt)
            except _Jump as jump:
                await self._enter(jump.state)
            except OtaError as exc:
                return await self._finish_failure(exc)
            except (OSError, TimeoutError) as exc:
                code = (
                    ReasonCode.DISK_ERROR if isinstance(exc, OSError) else ReasonCode.INTERNAL_ERROR
                )
                return await self._finish_failure(OtaFailedError(code, repr(exc)))
            except Exception as exc:  # noqa: BLE001 - any bug ends FAILED, with rollback
                self._log.exception("ota %s: error in %s", rec.job_id, state)
                return await self._finish_failure(
                    OtaFailedError(ReasonCode.INTERNAL_ERROR, f"{state}: {exc!r}")
                )
            if cancelled():
                raise asyncio.CancelledError
        return await self._finish_failure(OtaFailedError(ReasonCode.STATE_LOOP, "too many steps"))

    # -- states ---------------------------------------------------------------------------

    async def _step(
        self, state: OtaState, raw: Any, doc: OtaDocument | None
    ) -> OtaState | OtaResult:
        rec = self._record
        assert rec is not None  # noqa: S101
        inst = self.installer
        if state is S.RECEIVED:
            current = inst.current_version()
            rec.previous_version = rec.previous_version or current
            doc = check_document(
                raw,
                device_type=self.config.device_type,
                current_version=current,
                trusted_keys=self.config.trusted_keys,
            )
            rec.target_version, rec.total = doc.target_version, doc.artifact.size
            if current == doc.target_version and not getattr(inst, "on_trial", False):
                rec.detail = "already running the target version"
                return S.COMMITTED
            return S.VALIDATED
        assert doc is not None  # noqa: S101
        if state is S.VALIDATED:
            rec.download_path = str(inst.download_path(doc.firmware_id))
            return S.DOWNLOADING
        if state is S.DOWNLOADING:
            await self._download(doc)
            return S.DOWNLOADED
        if state is S.DOWNLOADED:
            await self._verify(doc)
            return S.VERIFIED
        if state is S.VERIFIED:
            return S.INSTALLING
        if state is S.INSTALLING:
            await self.faults.hit("install.before_write")
            await self._no_space()
            await self._timed(inst.install(inst.download_path(doc.firmware_id), doc.target_version))
            await self.faults.hit("install.before_fsync")
            return S.INSTALLED
        if state is S.INSTALLED:
            await self.faults.hit("bootflag.before_set")
            await self._timed(inst.activate())
            await self.faults.hit("bootflag.after_set")
            rebooting = inst.needs_reboot() and doc.policy.reboot != "none"
            return S.REBOOTING if rebooting else S.TRIAL_BOOT
        if state is S.REBOOTING:
            if rec.reboot_from in (None, self.boot_id):  # the reboot has not happened yet
                await self.faults.hit("reboot.before")
                rec.reboot_from = self.boot_id
                self._save("reboot-requested")
                return OtaResult("reboot", S.REBOOTING, self.details())
            return S.TRIAL_BOOT
        if state is S.TRIAL_BOOT:
            rec.boot_attempts += 1
            self._save("trial-boot")
            if rec.boot_attempts > doc.policy.max_boot_attempts:
                raise OtaFailedError(
                    ReasonCode.MAX_BOOT_ATTEMPTS, f"{rec.boot_attempts - 1} trial boots"
                )
            if not await self._timed(inst.verify_reboot(doc.target_version)):
                raise OtaFailedError(
                    ReasonCode.BOOT_FAILED,
                    f"running {inst.current_version()}, not {doc.target_version} on trial",
                )
            return S.HEALTH_CHECK
        if state is S.HEALTH_CHECK:
            await self.faults.hit("trial.before_health")
            await self._health(doc)
            return S.COMMITTING
        if state is S.COMMITTING:
            await self.faults.hit("commit.before_flag")
            await self._timed(inst.commit())
            return S.COMMITTED
        if state is S.ROLLING_BACK:
            await self.faults.hit("rollback.before")
            await self._timed(inst.rollback())
            return S.ROLLED_BACK
        if state is S.ROLLED_BACK:
            rec.state = S.FAILED
            rec.seq += 1
            self._save()
            return self._result()
        raise OtaFailedError(ReasonCode.INTERNAL_ERROR, f"no transition from {state}")

    async def _timed(self, aw: Awaitable[T]) -> T:
        async with asyncio.timeout(self.config.install_timeout_s):
            return await aw

    # -- download -------------------------------------------------------------------------

    async def _download(self, doc: OtaDocument) -> None:
        rec = self._record
        assert rec is not None  # noqa: S101
        cfg = self.config
        path = self.installer.download_path(doc.firmware_id)
        total = doc.artifact.size
        rec.total = total
        offset = min(rec.offset, path.stat().st_size if path.exists() else 0)
        rec.offset = offset
        downloader = Downloader(
            ca_file=cfg.ca_file,
            timeout_s=cfg.request_timeout_s,
            bandwidth_bps=doc.policy.bandwidth_bps,
        )
        url = doc.artifact.url
        failures = refreshes = 0
        stop = threading.Event()

        live = [rec.offset]

        def checkpoint(position: int) -> None:
            rec.offset = position
            self._save("checkpoint")

        def progress(position: int) -> None:
            live[0] = position

        try:
            async with asyncio.timeout(cfg.download_timeout_s):
                while True:
                    await self.faults.hit("download.before_request")
                    rec.attempt += 1
                    self._save("request", url_expires=_expires(url))
                    work = asyncio.ensure_future(
                        asyncio.to_thread(
                            downloader.fetch,
                            url,
                            path,
                            rec.offset,
                            total,
                            on_checkpoint=checkpoint,
                            on_progress=progress,
                            stop=stop,
                            faults=self.faults,
                        )
                    )
                    last = -1
                    while not work.done():
                        await asyncio.wait({work}, timeout=cfg.progress_interval_s)
                        if not work.done() and live[0] != last:
                            last = live[0]
                            await self._report(live_offset=last)
                    result = work.result()
                    if result.range_ignored:
                        rec.range_restarts += 1
                        self._save("range-ignored")
                    if result.status is AttemptStatus.COMPLETE:
                        return
                    if result.status is AttemptStatus.EXPIRED:
                        refreshes += 1
                        if refreshes > cfg.max_url_refreshes:
                            raise OtaFailedError(ReasonCode.URL_EXPIRED, "URL keeps expiring")
                        await self.faults.hit("url.refresh")
                        url = await self._fresh_url()
                        rec.url_refreshes += 1
                        self._save("url-refresh")
                        continue
                    failures += 1
                    if failures >= cfg.max_download_attempts:
                        why = result.detail or str(result.http_status)
                        raise OtaFailedError(
                            ReasonCode.DOWNLOAD_FAILED, f"{failures} failed requests; last: {why}"
                        )
                    self._log.info("ota %s: download interrupted: %s", rec.job_id, result.detail)
                    await self.faults.hit("download.interrupted")
                    await asyncio.sleep(cfg.retry_delay_s * failures)
        except TimeoutError as exc:
            raise OtaFailedError(
                ReasonCode.DOWNLOAD_TIMEOUT, f"download exceeded {cfg.download_timeout_s:g} s"
            ) from exc
        finally:
            stop.set()

    async def _fresh_url(self) -> str:
        assert self._reporter is not None  # noqa: S101
        raw = await self._reporter.fresh_document()
        if raw is None:
            raise OtaFailedError(ReasonCode.URL_EXPIRED, "the execution is no longer described")
        return parse_document(raw).artifact.url

    async def _verify(self, doc: OtaDocument) -> None:
        rec = self._record
        assert rec is not None  # noqa: S101
        await self.faults.hit("verify.before")
        path = self.installer.download_path(doc.firmware_id)
        size, digest = await asyncio.to_thread(_hash_file, path)
        forced = self.faults.check("verify.hash_mismatch")
        if size != doc.artifact.size or digest.hex() != doc.artifact.sha256 or forced:
            path.unlink(missing_ok=True)
            rec.offset = 0
            if rec.hash_retries < 1:
                rec.hash_retries += 1
                self._save("hash-mismatch", sha256=digest.hex(), size=size)
                raise _Jump(S.DOWNLOADING)
            code = (
                ReasonCode.SIZE_MISMATCH
                if size != doc.artifact.size
                else ReasonCode.IMAGE_HASH_MISMATCH
            )
            raise OtaRejectedError(code, f"image sha256 {digest.hex()[:16]}…, size {size}")
        if self.faults.check("verify.sig_invalid"):
            raise OtaRejectedError(ReasonCode.SIGNATURE_INVALID, "injected verify.sig_invalid")
        verify_signature(doc, self.config.trusted_keys, digest)

    # -- health ---------------------------------------------------------------------------

    async def _health(self, doc: OtaDocument) -> None:
        checks = list(self.config.health_checks)
        if self.config.builtin_report_check:
            checks.insert(0, HealthCheck("report", self._report_check, required=True, timeout_s=30))
        checks = [self._faulted(c) for c in checks]
        try:
            async with asyncio.timeout(doc.policy.trial_timeout_s):
                results = await run_health_checks(checks, required_names=doc.policy.health_checks)
        except TimeoutError as exc:
            raise OtaFailedError(
                ReasonCode.TRIAL_TIMEOUT, f"health checks exceeded {doc.policy.trial_timeout_s} s"
            ) from exc
        failed = [r for r in results if r.required and not r.ok]
        if failed:
            text = ", ".join(f"{r.name}: {r.detail}" for r in failed)
            raise OtaFailedError(ReasonCode.HEALTH_CHECK_FAILED, text)

    def _faulted(self, check: HealthCheck) -> HealthCheck:
        async def run() -> bool | None:
            fired = await self.faults.hit(f"health.fail:{check.name}")
            if fired is not None:
                return False
            return await check.run()

        return dataclasses.replace(check, run=run)

    async def _report_check(self) -> bool:
        return await self._report(must_succeed=True)

    # -- endings --------------------------------------------------------------------------

    def _result(self) -> OtaResult:
        rec = self._record
        assert rec is not None  # noqa: S101
        details = self.details()
        if rec.state is S.COMMITTED:
            return OtaResult("succeeded", rec.state, details)
        outcome: Literal["rejected", "failed"] = "rejected" if rec.state is S.REJECTED else "failed"
        return OtaResult(outcome, rec.state, details, rec.reason_code, rec.detail)

    async def _finish_failure(self, exc: OtaError) -> OtaResult:
        rec = self._record
        assert rec is not None  # noqa: S101
        self._log.warning("ota %s: %s in %s", rec.job_id, exc, rec.state)
        if rec.state is S.COMMITTED:
            return self._result()  # a fault after the commit flag: the update stands
        rec.reason_code, rec.detail = exc.reason_code.value, exc.detail
        if rec.state in _ACTIVATED or rec.state is S.ROLLING_BACK:
            self._save("error", reason_code=rec.reason_code)
            for _ in range(3):  # rollback must not be skipped by one transient failure
                try:
                    if rec.state is not S.ROLLING_BACK:
                        await self._enter(S.ROLLING_BACK)
                        await self.faults.hit("state.ROLLING_BACK")
                    await self.faults.hit("rollback.before")
                    await self._timed(self.installer.rollback())
                    await self._enter(S.ROLLED_BACK)
                    await self.faults.hit("state.ROLLED_BACK")
                    break
                except Exception as err:  # noqa: BLE001 - retried, then reported
                    self._log.exception("ota %s: rollback failed", rec.job_id)
                    rec.detail = f"{exc.detail}; rollback failed: {err!r}"
        else:
            self._remove_download()
        rec.state = S.REJECTED if exc.rejected and rec.state in _BEFORE_INSTALL else S.FAILED
        rec.seq += 1
        self._save()
        return self._result()

    def _remove_download(self) -> None:
        rec = self._record
        if rec is None:
            return
        if rec.download_path:
            with contextlib.suppress(OSError):
                Path(rec.download_path).unlink(missing_ok=True)
        rec.offset = 0

    async def _cancel_cleanup(self) -> None:
        """The execution was canceled in the cloud: undo what is not committed, stop."""
        rec = self._record
        if rec is None or rec.terminal:
            return
        if rec.state in _ACTIVATED or rec.state is S.ROLLING_BACK:
            with contextlib.suppress(Exception):
                await self._timed(self.installer.rollback())
        if rec.state is S.COMMITTED:
            return
        self._remove_download()
        rec.state, rec.reason_code = S.CANCELED, ReasonCode.CANCELED.value
        rec.seq += 1
        self._save()

    async def _abandon(self, stale: OtaRecord) -> None:
        """A different job arrived while another was unfinished: roll the old one back."""
        self._log.warning("ota: abandoning unfinished job %s in %s", stale.job_id, stale.state)
        self._record = stale
        if stale.state in _ACTIVATED or stale.state is S.ROLLING_BACK:
            with contextlib.suppress(Exception):
                await self._timed(self.installer.rollback())
        stale.state, stale.reason_code = S.CANCELED, ReasonCode.CANCELED.value
        self._save("abandoned")


def _hash_file(path: Path) -> tuple[int, bytes]:
    h = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(1024 * 1024):
                h.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return 0, b""
    return size, h.digest()


def _expires(url: str) -> str:
    for part in url.split("?", 1)[-1].split("&"):
        if part.startswith("expires="):
            return part[len("expires=") :]
    return ""
