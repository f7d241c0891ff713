"""``iot-certs``: command line front end for the certs package.

Every bad input (missing file, not a certificate, wrong key, expired CA, existing key without
``--force``, bad CSR signature, ...) ends with one ``iot-certs: error: <file>: <problem>`` line
on stderr and exit code 2; usage errors also exit 2. ``verify`` exits 1 for an invalid signature.
"""

import base64
import binascii
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from certs import (
    CertificateAuthority,
    CertsError,
    CodeSigningKey,
    IssuedCert,
    KeyType,
    create_csr,
    generate_private_key,
    inspect_certificate,
    private_key_to_pem,
    verify_file,
    write_file_atomic,
    write_private_key,
)
from certs._files import read_input, refuse_existing

PROG = "iot-certs"
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SIGNING_KEY = "signing.key"
SIGNING_PUB = "signing.pub"
EXIT_BAD_INPUT = 2
EXIT_INVALID_SIGNATURE = 1

app = typer.Typer(
    name=PROG,
    help="X.509 certificates and code signing keys for AWS IoT Core devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
ca_app = typer.Typer(help="Local certificate authority.", no_args_is_help=True)
csr_app = typer.Typer(help="Certificate signing requests.", no_args_is_help=True)
signing_key_app = typer.Typer(help="OTA code signing keys.", no_args_is_help=True)
app.add_typer(ca_app, name="ca")
app.add_typer(csr_app, name="csr")
app.add_typer(signing_key_app, name="signing-key")

CaDir = Annotated[Path, typer.Option("--ca-dir", help=f"Directory with {CA_CERT} and {CA_KEY}.")]
OutDir = Annotated[Path, typer.Option("--out-dir", help="Output directory (created if needed).")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing files, keys included.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _os_error_text(exc: OSError) -> str:
    problem = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {problem}"
    return problem


@contextlib.contextmanager
def _errors(path: Path | None = None) -> Iterator[None]:
    """Turn CertsError/OSError into one stderr line and exit 2 (``path`` names path-less errors)."""
    try:
        yield
    except CertsError as exc:
        error = exc if exc.path is not None or path is None else CertsError(exc.message, path=path)
        message = str(error)
    except OSError as exc:
        message = _os_error_text(exc)
    else:
        return
    typer.echo(f"{PROG}: error: {' '.join(message.split())}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _emit(data: dict[str, object], json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps(data, indent=2))
        return
    width = max(len(key) for key in data)
    for key, value in data.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list | tuple) else value
        typer.echo(f"{key + ':':<{width + 1}} {shown}")


def _load_ca(ca_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.load(ca_dir / CA_CERT, ca_dir / CA_KEY)


def _issued_summary(cert: IssuedCert, cert_path: Path, key_path: Path | None) -> dict[str, object]:
    summary: dict[str, object] = {
        "common_name": cert.common_name,
        "certificate_id": cert.certificate_id,
        "not_after": cert.not_after.isoformat(),
        "cert": str(cert_path),
    }
    if key_path is not None:
        summary["key"] = str(key_path)
    return summary


def _write_pair(cert: IssuedCert, out_dir: Path, stem: str, force: bool) -> dict[str, object]:
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / f"{stem}.pem", out_dir / f"{stem}.key"
    cert.write(cert_path, key_path, overwrite=force)
    return _issued_summary(cert, cert_path, key_path)


@ca_app.command("create")
def ca_create(
    *,
    out_dir: OutDir,
    key_type: Annotated[KeyType, typer.Option("--key-type", help="CA key algorithm.")] = KeyType.EC,
    cn: Annotated[str, typer.Option("--cn", help="CA common name.")] = "IoT Toolkit Local CA",
    days: Annotated[int, typer.Option("--days", min=1, help="Validity in days.")] = 3650,
    force: Force = False,
    json_out: JsonOut = False,
) -> None:
    """Create a CA: OUT_DIR/ca.pem and OUT_DIR/ca.key (mode 0600)."""
    cert_path, key_path = out_dir / CA_CERT, out_dir / CA_KEY
    with _errors():
        if not force:
            refuse_existing(key_path, cert_path)
        ca = CertificateAuthority.create(common_name=cn, key_type=key_type, days=days)
        out_dir.mkdir(parents=True, exist_ok=True)
        ca.save(cert_path, key_path, overwrite=force)
        info = inspect_certificate(ca.cert_pem)
    _emit(
        {
            "common_name": cn,
            "certificate_id": info.fingerprint_sha256,
            "key_type": info.key_type,
            "not_after": info.not_after.isoformat(),
            "cert": str(cert_path),
            "key": str(key_path),
        },
        json_out,
    )


@app.command("server")
def server(
    *,
    ca_dir: CaDir,
    out_dir: OutDir,
    host: Annotated[list[str] | None, typer.Option("--host", help="DNS name (repeatable).")] = None,
    ip: Annotated[list[str] | None, typer.Option("--ip", help="IP address (repeatable).")] = None,
    days: Annotated[int, typer.Option("--days", min=1)] = 825,
    force: Force = False,
    json_out: JsonOut = False,
) -> None:
    """Issue a TLS server certificate: OUT_DIR/server.pem and OUT_DIR/server.key."""
    with _errors():
        ca = _load_ca(ca_dir)
        cert = ca.issue_server_cert(
            host if host is not None else ("localhost",),
            ip if ip is not None else ("127.0.0.1",),
            days=days,
        )
        summary = _write_pair(cert, out_dir, "server", force)
    _emit(summary, json_out)


def _bulk_names(prefix: str, count: int) -> list[str]:
    width = len(str(count - 1))
    return [f"{prefix}{index:0{width}d}" for index in range(count)]


def _issue_bulk(
    ca: CertificateAuthority, names: list[str], out_dir: Path, days: int, force: bool
) -> list[dict[str, object]]:
    if not force:
        refuse_existing(*(out_dir / f"{name}.{ext}" for name in names for ext in ("key", "pem")))
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = []
    columns = (TextColumn("issuing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("issuing", total=len(names))
        for cert in ca.issue_device_certs(names, days=days):
            summaries.append(_write_pair(cert, out_dir, cert.common_name, force))
            progress.advance(task)
    return summaries


@app.command("device")
def device(
    *,
    ca_dir: CaDir,
    out_dir: OutDir,
    thing: Annotated[str | None, typer.Argument(metavar="THING", help="Thing name (CN).")] = None,
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="Bulk: issue N certs.")
    ] = None,
    prefix: Annotated[str, typer.Option("--prefix", help="Bulk: thing name prefix.")] = "device-",
    key_type: Annotated[KeyType, typer.Option("--key-type")] = KeyType.EC,
    days: Annotated[int, typer.Option("--days", min=1)] = 365,
    force: Force = False,
    json_out: JsonOut = False,
) -> None:
    """Issue a device certificate OUT_DIR/THING.pem + THING.key, or --count N of them."""
    if thing is not None and count is None:
        names = [thing]
    elif thing is None and count is not None:
        names = _bulk_names(prefix, count)
    else:
        raise typer.BadParameter("give either a THING name or --count N (not both)")
    with _errors():
        ca = _load_ca(ca_dir)
        if count is None:
            cert = ca.issue_device_cert(names[0], days=days, key_type=key_type)
            summary = _write_pair(cert, out_dir, names[0], force)
        else:
            certs = _issue_bulk(ca, names, out_dir, days, force)
            summary = {"count": len(certs), "out_dir": str(out_dir)}
            if json_out:
                summary["certificates"] = certs
    _emit(summary, json_out)


@app.command("claim")
def claim(
    *,
    ca_dir: CaDir,
    out_dir: OutDir,
    name: Annotated[str, typer.Option("--name", help="Claim certificate CN.")] = "claim",
    days: Annotated[int, typer.Option("--days", min=1)] = 365,
    force: Force = False,
    json_out: JsonOut = False,
) -> None:
    """Issue a fleet-provisioning claim certificate: OUT_DIR/NAME.pem and OUT_DIR/NAME.key."""
    with _errors():
        ca = _load_ca(ca_dir)
        summary = _write_pair(ca.issue_claim_cert(name, days=days), out_dir, name, force)
    _emit(summary, json_out)


@csr_app.command("create")
def csr_create(
    *,
    cn: Annotated[str, typer.Option("--cn", help="Common name (usually the thing name).")],
    key_out: Annotated[Path, typer.Option("--key-out", help="Private key file (0600).")],
    csr_out: Annotated[Path, typer.Option("--csr-out", help="CSR file (PEM).")],
    key_type: Annotated[KeyType, typer.Option("--key-type")] = KeyType.EC,
    force: Force = False,
    json_out: JsonOut = False,
) -> None:
    """Create a private key and a CSR for it, as a device would."""
    with _errors():
        if not force:
            refuse_existing(key_out, csr_out)
        key = generate_private_key(key_type)
        csr = create_csr(key, cn)
        write_private_key(key_out, private_key_to_pem(key), overwrite=force)
        write_file_atomic(csr_out, csr)
    _emit({"common_name": cn, "key": str(key_out), "csr": str(csr_out)}, json_out)


@csr_app.command("sign")
def csr_sign(
    *,
    csr: Annotated[Path, typer.Argument(help="CSR file (PEM or DER).")],
    ca_dir: CaDir,
    out: Annotated[Path, typer.Option("--out", help="Certificate file to write.")],
    cn: Annotated[str | None, typer.Option("--cn", help="Override the CSR's CN.")] = None,
    days: Annotated[int, typer.Option("--days", min=1)] = 365,
    force: Force = False,
    json_out: JsonOut = False,
) -> None:
    """Issue a device certificate for a CSR (its signature must verify)."""
    with _errors():
        ca = _load_ca(ca_dir)
        data = read_input(csr)
    with _errors(path=csr):
        cert = ca.sign_csr(data, common_name=cn, days=days)
    with _errors():
        cert.write(out, overwrite=force)
    _emit(_issued_summary(cert, out, None), json_out)


@signing_key_app.command("create")
def signing_key_create(*, out_dir: OutDir, force: Force = False, json_out: JsonOut = False) -> None:
    """Create an ECDSA P-256 code signing key: signing.key (0600) and signing.pub."""
    key_path, pub_path = out_dir / SIGNING_KEY, out_dir / SIGNING_PUB
    with _errors():
        key = CodeSigningKey.generate()
        out_dir.mkdir(parents=True, exist_ok=True)
        key.save(key_path, pub_path, overwrite=force)
    _emit({"key_id": key.key_id, "key": str(key_path), "public_key": str(pub_path)}, json_out)


@app.command("sign")
def sign(
    *,
    file: Annotated[Path, typer.Argument(help="File to sign (e.g. a firmware image).")],
    key: Annotated[Path, typer.Option("--key", help="Code signing private key.")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the base64 signature.")] = None,
    json_out: JsonOut = False,
) -> None:
    """Sign FILE's SHA-256 with ECDSA P-256; print the digest, key id and base64 signature."""
    with _errors():
        signing_key = CodeSigningKey.load(key)
        digest, signature = signing_key.sign_file(file)
        encoded = base64.b64encode(signature).decode("ascii")
        if out is not None:
            write_file_atomic(out, f"{encoded}\n".encode("ascii"))
    result: dict[str, object] = {
        "file": str(file),
        "sha256": digest,
        "key_id": signing_key.key_id,
        "signature": encoded,
    }
    if out is not None:
        result["signature_file"] = str(out)
    _emit(result, json_out)


def _decode_signature(data: bytes) -> bytes:
    """A signature file holds base64 text (as written by ``sign``) or raw DER."""
    try:
        return base64.b64decode(data.strip(), validate=True)
    except binascii.Error:
        return data


@app.command("verify")
def verify(
    *,
    file: Annotated[Path, typer.Argument(help="Signed file.")],
    pub: Annotated[Path, typer.Option("--pub", help="Code signing public key (PEM).")],
    signature: Annotated[Path, typer.Option("--signature", help="Signature file.")],
    json_out: JsonOut = False,
) -> None:
    """Verify FILE against a signature: exit 0 if valid, 1 if not."""
    with _errors():
        public_key_pem = read_input(pub)
        sig = _decode_signature(read_input(signature))
    with _errors(path=pub):
        valid = verify_file(public_key_pem, file, sig)
    _emit({"file": str(file), "valid": valid}, json_out)
    if not valid:
        raise typer.Exit(EXIT_INVALID_SIGNATURE)


@app.command("inspect")
def inspect(
    *,
    cert: Annotated[Path, typer.Argument(help="Certificate file (PEM or DER).")],
    json_out: JsonOut = False,
) -> None:
    """Show a certificate's subject, issuer, fingerprint, validity, key type and SANs."""
    with _errors():
        info = inspect_certificate(cert)
    if json_out:
        _emit(info.to_dict(), json_out=True)
        return
    not_after = info.not_after.isoformat() + (" (EXPIRED)" if info.expired else "")
    _emit(
        {
            "subject": info.subject,
            "issuer": info.issuer,
            "fingerprint": info.fingerprint_sha256,
            "serial": f"{info.serial:x}",
            "not_before": info.not_before.isoformat(),
            "not_after": not_after,
            "key_type": info.key_type,
            "is_ca": "yes" if info.is_ca else "no",
            "sans": list(info.sans) or ["-"],
        },
        json_out=False,
    )


def main() -> None:
    """Console script entry point (standalone mode: usage errors exit 2)."""
    app(prog_name=PROG)
