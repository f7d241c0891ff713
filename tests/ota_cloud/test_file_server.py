"""The firmware file server over real sockets: HTTPS with the stub CA, Range, 403, faults."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from cloud_stubs import StatePaths
from cloud_stubs._state import ensure_state
from cloud_stubs.firmware import FirmwareManifest, FirmwareServer, FirmwareStore, OtaPaths
from tests.ota_cloud._http import Response, client_tls, fetch, fetch_many

SIZE = 200_000


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def paths(tmp_path: Path) -> StatePaths:
    p = StatePaths.at(tmp_path / "state")
    ensure_state(p).close()  # CA and the server certificate HTTPS uses
    return p


@pytest.fixture
def image(tmp_path: Path) -> bytes:
    data = os.urandom(SIZE)
    (tmp_path / "fw.bin").write_bytes(data)
    return data


@pytest.fixture
def manifest(paths: StatePaths, image: bytes, tmp_path: Path) -> FirmwareManifest:
    with FirmwareStore(paths) as store:
        return store.upload(tmp_path / "fw.bin", version="3.0.0", device_type="robot-pi")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest_asyncio.fixture
async def server(
    paths: StatePaths, manifest: FirmwareManifest, clock: Clock
) -> AsyncIterator[FirmwareServer]:
    async with FirmwareServer(paths, port=0, url_ttl_s=60, clock=clock) as srv:
        yield srv


async def get(server: FirmwareServer, url: str, **headers: str) -> Response:
    return await fetch(url, ca_file=server.paths.ca_cert, headers=headers)


async def test_https_with_the_stub_ca_full_download(
    server: FirmwareServer, manifest: FirmwareManifest, image: bytes, paths: StatePaths
) -> None:
    assert server.scheme == "https"
    assert server.port > 0
    url = server.url(manifest.firmware_id, thing="robot-1")
    assert url.startswith(f"https://127.0.0.1:{server.port}/firmware/{manifest.firmware_id}?")
    r = await get(server, url)
    assert r.status == 200
    assert r.body == image
    assert hashlib.sha256(r.body).hexdigest() == manifest.sha256
    assert r.headers["content-length"] == str(SIZE)
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"] == f'"{manifest.sha256}"'
    assert "content-range" not in r.headers
    info = json.loads(OtaPaths.of(paths).server_file.read_text())
    assert info["base_url"] == server.base_url
    assert info["running"] is True
    (c,) = server.counters(manifest.firmware_id)
    assert (c.thing, c.requests, c.bytes_served, c.status_200) == ("robot-1", 1, SIZE, 1)


async def test_https_rejects_clients_that_do_not_trust_the_stub_ca(
    server: FirmwareServer, manifest: FirmwareManifest
) -> None:
    url = server.url(manifest.firmware_id)
    with pytest.raises(ssl.SSLCertVerificationError):
        await fetch(url)  # system trust store only


async def test_range_requests_206_and_416(
    server: FirmwareServer, manifest: FirmwareManifest, image: bytes
) -> None:
    url = server.url(manifest.firmware_id, thing="robot-2")
    r = await get(server, url, Range="bytes=100-199")
    assert r.status == 206
    assert r.body == image[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{SIZE}"
    assert r.headers["content-length"] == "100"
    r = await get(server, url, Range=f"bytes={SIZE - 10}-")
    assert (r.status, r.body) == (206, image[-10:])
    r = await get(server, url, Range="bytes=-5")
    assert (r.status, r.body) == (206, image[-5:])
    for bad in (f"bytes={SIZE}-", "bytes=50-10", "bytes=abc"):
        r = await get(server, url, Range=bad)
        assert r.status == 416, bad
        assert r.headers["content-range"] == f"bytes */{SIZE}"
        assert b"InvalidRange" in r.body
    r = await get(server, url, Range="bytes=0-1,5-6")
    assert (r.status, len(r.body)) == (200, SIZE)
    (c,) = server.counters(manifest.firmware_id, "robot-2")
    assert (c.requests, c.status_206, c.status_416, c.status_200) == (7, 3, 3, 1)
    assert c.bytes_served == 100 + 10 + 5 + SIZE


async def test_resume_by_ranges_reassembles_the_image(
    server: FirmwareServer, manifest: FirmwareManifest, image: bytes
) -> None:
    url = server.url(manifest.firmware_id)
    chunk = 65_536
    ranges = [{"Range": f"bytes={o}-{o + chunk - 1}"} for o in range(0, SIZE, chunk)]
    responses = await fetch_many(url, ranges, ca_file=server.paths.ca_cert)  # one connection
    assert [r.status for r in responses] == [206] * len(ranges)
    assert b"".join(r.body for r in responses) == image


async def test_expired_and_forged_urls_get_403(
    server: FirmwareServer, manifest: FirmwareManifest, clock: Clock
) -> None:
    url = server.url(manifest.firmware_id, thing="robot-3")
    clock.now += 61  # past the 60 s lifetime
    r = await get(server, url)
    assert r.status == 403
    assert b"<Code>AccessDenied</Code><Message>Request has expired</Message>" in r.body
    fresh = server.url(manifest.firmware_id, thing="robot-3")
    assert (await get(server, fresh)).status == 200
    forged = fresh.replace("thing=robot-3", "thing=robot-4")
    r = await get(server, forged)
    assert r.status == 403
    assert b"SignatureDoesNotMatch" in r.body
    bare = fresh.split("?")[0]
    assert (await get(server, bare)).status == 403
    (c,) = server.counters(manifest.firmware_id, "robot-3")
    assert (c.requests, c.status_403, c.status_200) == (2, 1, 1)
    assert server.totals(manifest.firmware_id).status_403 == 3


async def test_ttl_change_applies_to_new_urls(
    server: FirmwareServer, manifest: FirmwareManifest, clock: Clock, paths: StatePaths
) -> None:
    server.url_ttl_s = 5
    assert json.loads(OtaPaths.of(paths).server_file.read_text())["url_ttl_s"] == 5
    url = server.url(manifest.firmware_id)
    clock.now += 6
    assert (await get(server, url)).status == 403


async def test_unknown_firmware_404_head_and_methods(
    server: FirmwareServer, manifest: FirmwareManifest
) -> None:
    missing = server.url("fw-000000000000")
    r = await get(server, missing)
    assert r.status == 404
    assert b"NoSuchKey" in r.body
    assert server.totals("fw-000000000000").status_404 == 1
    url = server.url(manifest.firmware_id)
    head = await fetch(url, ca_file=server.paths.ca_cert, method="HEAD")
    assert (head.status, head.headers["content-length"], head.body) == (200, str(SIZE), b"")
    post = await fetch(url, ca_file=server.paths.ca_cert, method="POST")
    assert post.status == 405
    health = await get(server, f"{server.base_url}/healthz")
    assert (health.status, health.body) == (200, b"ok\n")
    assert (await get(server, f"{server.base_url}/other")).status == 404


async def test_fault_drop_after_cuts_the_connection(
    server: FirmwareServer, manifest: FirmwareManifest, image: bytes
) -> None:
    server.add_fault("drop_after:70000", firmware_id=manifest.firmware_id)
    url = server.url(manifest.firmware_id, thing="robot-5")
    r = await get(server, url)
    assert r.status == 200
    assert not r.complete
    assert r.body == image[:70000]
    # used up: the device resumes with a Range and gets the rest
    r = await get(server, url, Range="bytes=70000-")
    assert (r.status, r.body) == (206, image[70000:])
    (c,) = server.counters(manifest.firmware_id, "robot-5")
    assert (c.dropped, c.faults_fired, c.bytes_served) == (1, 1, SIZE)


async def test_fault_ignore_range_expired_403_status_and_corrupt(
    server: FirmwareServer, manifest: FirmwareManifest, image: bytes
) -> None:
    url = server.url(manifest.firmware_id, thing="robot-6")
    server.add_fault("ignore_range", thing="robot-6")
    r = await get(server, url, Range="bytes=10-19")
    assert (r.status, len(r.body)) == (200, SIZE)  # the server "ignored" Range
    assert (await get(server, url, Range="bytes=10-19")).status == 206  # used up

    server.add_fault("expired_403", times=2)
    assert [(await get(server, url)).status for _ in range(3)] == [403, 403, 200]

    server.add_fault("status:503")
    r = await get(server, url)
    assert r.status == 503
    assert b"InjectedFault" in r.body

    server.add_fault("corrupt:12")
    r = await get(server, url, Range="bytes=10-14")
    assert r.body == image[10:12] + bytes([image[12] ^ 0xFF]) + image[13:15]
    assert (await get(server, url, Range="bytes=10-14")).body == image[10:15]

    faults = server.store.faults()
    assert [(str(f.spec), f.fired, f.remaining) for f in faults] == [
        ("ignore_range", 1, 0),
        ("expired_403", 2, 0),
        ("status:503", 1, 0),
        ("corrupt:12", 1, 0),
    ]
    (c,) = server.counters(manifest.firmware_id, "robot-6")
    assert (c.status_403, c.other_status, c.faults_fired) == (2, 1, 5)


async def test_fault_throttle_and_delay(server: FirmwareServer, manifest: FirmwareManifest) -> None:
    url = server.url(manifest.firmware_id)
    server.add_fault("throttle:100000")
    server.add_fault("delay:0.2")
    started = time.monotonic()
    # 50 kB at 100 kB/s in 10 kB chunks: the last chunk leaves 0.4 s after the first
    r = await get(server, url, Range="bytes=0-49999")
    elapsed = time.monotonic() - started
    assert r.status == 206
    assert len(r.body) == 50000
    assert 0.55 <= elapsed < 3  # 0.2 s delay + 0.4 s


async def test_plain_http_and_restart_keeps_urls_valid(
    paths: StatePaths, manifest: FirmwareManifest, image: bytes
) -> None:
    async with FirmwareServer(paths, tls=False) as srv:
        url = srv.url(manifest.firmware_id)
        assert url.startswith("http://127.0.0.1:")
        r = await fetch(url)
        assert (r.status, r.body) == (200, image)
        port = srv.port
    info = json.loads(OtaPaths.of(paths).server_file.read_text())
    assert info["running"] is False
    # the URL secret lives in the state directory: a restarted server accepts old URLs
    async with FirmwareServer(paths, tls=False, port=port) as srv:
        assert (await fetch(url)).status == 200


async def test_stop_closes_idle_keepalive_connections(
    paths: StatePaths, manifest: FirmwareManifest
) -> None:
    srv = FirmwareServer(paths, tls=False)
    await srv.start()
    url = srv.url(manifest.firmware_id)
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    async with asyncio.timeout(5):
        await srv.stop()
        while await reader.read(65536):
            pass  # the server closed the kept-alive connection
    writer.close()
    assert url  # the URL was valid while it ran


async def test_bad_requests_get_400(server: FirmwareServer) -> None:
    reader, writer = await asyncio.open_connection(
        server.host, server.port, ssl=client_tls(server.paths.ca_cert)
    )
    writer.write(b"NONSENSE\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 400")
    writer.close()
