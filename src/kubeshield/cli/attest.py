"""``kubeshield attest``: verify TEE evidence offline, and release keys to attested software.

\b
kubeshield attest verify  --evidence F [--collateral F] [--event-log F] [--policy F] [--at RFC3339]
                          [--report-data HEX] [--allow-sample] [-o text|json]
kubeshield attest release-server --config FILE [--listen HOST:PORT] [--allow-sample]
kubeshield attest request --url URL --resource NAME --tee tpm|sample [--tcti T --pcrs 0-23] [--out F]
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from kubeshield.attest import EvidenceFormatError, load_policy, verify_evidence
from kubeshield.cli._common import EXIT_FAILURE, option, raise_cli_error
from kubeshield.errors import KubeshieldError

__all__ = ["group"]

_MAX_INPUT = 4 << 20


@click.group(name="attest")
def group() -> None:
    """Verify SGX/TDX/SEV-SNP/TPM evidence, and release keys only to attested software."""


def _read(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        with path.open("rb") as fh:
            data = fh.read(_MAX_INPUT + 1)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path}: {exc.strerror or type(exc).__name__}", param_hint=flag
        ) from None
    if len(data) > _MAX_INPUT:
        raise click.BadParameter(f"{path} is larger than {_MAX_INPUT} bytes", param_hint=flag)
    return data


def parse_time(value: str | None) -> datetime:
    """``--at`` (RFC 3339, e.g. 2025-07-19T10:01:17Z); the current time when not given."""
    if value is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an RFC 3339 time such as 2025-07-19T10:01:17Z", param_hint="--at"
        ) from None
    if at.tzinfo is None:
        raise click.BadParameter("give a time zone (e.g. a trailing Z)", param_hint="--at")
    return at.astimezone(UTC)


def _hex(value: str | None, flag: str) -> bytes | None:
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise click.BadParameter("must be hex", param_hint=flag) from None
    if not 1 <= len(raw) <= 64:
        raise click.BadParameter("must be 1..64 bytes", param_hint=flag)
    return raw


@group.command("verify")
@option(
    "--evidence",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The evidence: an SGX/TDX quote, an SNP report, TPM or sample evidence JSON.",
)
@option(
    "--collateral",
    type=click.Path(dir_okay=False, path_type=Path),
    help="SGX/TDX: the dcap-qvl/PCCS collateral JSON; SNP: the VCEK or VLEK certificate (DER).",
)
@option(
    "--event-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TDX: the CC event log (ACPI CCEL area) to replay against the quote's RTMRs.",
)
@option(
    "--policy", type=click.Path(dir_okay=False, path_type=Path), help="A policy (YAML) the claims must meet."
)
@option("--at", "at_text", help="Verification time, RFC 3339 [default: now].")
@option("--report-data", help="Expected report data / nonce binding (hex, zero-padded).")
@option("--allow-sample", is_flag=True, help="Accept the no-protection 'sample' TEE (tests and demos only).")
@option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def verify_cmd(
    evidence: Path,
    collateral: Path | None,
    event_log: Path | None,
    policy: Path | None,
    at_text: str | None,
    report_data: str | None,
    allow_sample: bool,
    output: str,
) -> int:
    """Verify evidence offline and print the verdict and claims. Exit 0 only when it verifies.

    \b
    The TEE type comes from the evidence. Examples:
      kubeshield attest verify --evidence sgx_quote --collateral col.json --at 2025-07-19T10:01:17Z
      kubeshield attest verify --evidence report.bin --collateral vcek.der --policy snp-policy.yaml
      kubeshield attest verify --evidence tdx_quote --event-log CCEL_data -o json
    Without --collateral an SGX/TDX quote or SNP report is parsed, not verified (exit 1).
    """
    at = parse_time(at_text)
    data = _read(evidence, "--evidence")
    assert data is not None
    try:
        pol = load_policy(policy) if policy is not None else None
        result = verify_evidence(
            data,
            at=at,
            collateral=_read(collateral, "--collateral"),
            event_log=_read(event_log, "--event-log"),
            expected_report_data=_hex(report_data, "--report-data"),
            allow_sample=allow_sample,
        )
    except EvidenceFormatError as exc:
        doc = {"tee": "", "ok": False, "status": "", "advisory_ids": [], "claims": {}, "reason": str(exc)}
        _render(doc, output)
        return EXIT_FAILURE
    except KubeshieldError as exc:
        raise_cli_error(exc)
        raise  # unreachable
    doc = result.to_json()
    if pol is not None:
        decision = pol.evaluate(result)
        doc["policy"] = {"allowed": decision.allowed, "failures": list(decision.failures)}
        if not decision.allowed:
            doc["ok"] = False
            doc["reason"] = doc["reason"] or "policy: " + decision.reason
    _render(doc, output)
    return 0 if doc["ok"] else EXIT_FAILURE


def _render(doc: dict[str, object], output: str) -> None:
    if output == "json":
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    verdict = "verified" if doc["ok"] else "NOT verified"
    status = f" status={doc['status']}" if doc["status"] else ""
    click.echo(f"{doc['tee'] or 'unknown'}: {verdict}{status}")
    if doc["advisory_ids"]:
        click.echo(f"advisories: {', '.join(doc['advisory_ids'])}")  # type: ignore[arg-type]
    if doc["reason"]:
        click.echo(f"reason: {doc['reason']}")
    claims = doc["claims"]
    assert isinstance(claims, dict)
    for key in sorted(claims):
        click.echo(f"  {key}: {claims[key]}")
    sys.stdout.flush()


@group.command("release-server")
@option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Release server config (YAML): listen, tls, resources and their policies.",
)
@option("--listen", help="HOST:PORT to listen on (overrides the config's listen).")
@option(
    "--allow-sample",
    is_flag=True,
    help="Also accept the 'sample' TEE, which gives NO protection (tests and demos only).",
)
def release_server_cmd(config_path: Path, listen: str | None, allow_sample: bool) -> int:
    """Release keys (keyring KEK versions, key files) only to software whose evidence verifies.

    \b
    RCAR exchange (docs/attestation.md): challenge with a fresh single-use nonce, evidence whose report
    data binds SHA-384(nonce, ephemeral public key), the resource's policy, the resource as a JWE
    (ECDH-ES, A256GCM) to that key. Example:
      kubeshield attest release-server --config release.yaml
    """
    import dataclasses
    import logging
    import signal
    import threading

    from kubeshield.attest_release.server import ReleaseServer, load_release_config

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load_release_config(config_path)
        if listen is not None:
            config = dataclasses.replace(config, listen=listen)
        if allow_sample:
            config = dataclasses.replace(config, allow_sample=True)
        server = ReleaseServer(config)
    except KubeshieldError as exc:
        raise_cli_error(exc)
        raise  # unreachable
    except OSError as exc:
        raise click.ClickException(f"cannot listen: {exc.strerror or type(exc).__name__}") from None
    if config.allow_sample:
        click.echo("WARNING: the sample TEE is enabled: it gives no protection", err=True)

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    click.echo(f"ready url={server.url}")
    sys.stdout.flush()
    server.serve_forever()
    return 0


@group.command("request")
@option("--url", required=True, help="The release server, http(s)://HOST:PORT.")
@option("--resource", required=True, help="The resource name in the server's config.")
@option(
    "--tee",
    type=click.Choice(["tpm", "sample"]),
    required=True,
    help="How to attest: a TPM quote, or the no-protection sample TEE.",
)
@option("--tcti", help="tpm: the TPM, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321.")
@option("--pcrs", default="0-23", show_default=True, help="tpm: PCRs to quote, e.g. 0-23 or 0,7,16.")
@option("--cafile", type=click.Path(dir_okay=False, exists=True), help="CA bundle for an https:// server.")
@option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the released resource to this file (mode 0600, atomically); never to stdout.",
)
def request_cmd(
    url: str, resource: str, tee: str, tcti: str | None, pcrs: str, cafile: str | None, out: Path
) -> None:
    """Attest to a release server and store the resource it releases.

    \b
    Example:
      kubeshield attest request --url http://10.0.0.5:8443 --resource sealing-key \\
          --tee tpm --tcti device:/dev/tpmrm0 --out /run/kubeshield/sealing.key
    """
    from kubeshield.attest.attester import Attester
    from kubeshield.attest.sample import SampleAttester
    from kubeshield.attest_release.client import request_resource
    from kubeshield.keys.files import write_private_atomic
    from kubeshield.keys.tpm_attest import TpmAttester

    attester: Attester
    if tee == "tpm":
        if not tcti:
            raise click.UsageError("--tee tpm needs --tcti")
        attester = TpmAttester(tcti=tcti, pcrs=parse_pcrs(pcrs))
    else:
        attester = SampleAttester()
    try:
        material = request_resource(url, resource, attester=attester, cafile=cafile)
        write_private_atomic(out, material)
    except (KubeshieldError, ValueError) as exc:
        if isinstance(exc, KubeshieldError):
            raise_cli_error(exc)
        raise click.BadParameter(str(exc)) from None
    click.echo(f"released {resource} ({len(material)} bytes) to {out}")


def parse_pcrs(value: str) -> tuple[int, ...]:
    """``0-23`` / ``0,7,16`` -> PCR indexes."""
    out: set[int] = set()
    try:
        for part in value.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-", 1)
                out.update(range(int(lo), int(hi) + 1))
            elif part:
                out.add(int(part))
    except ValueError:
        raise click.BadParameter("PCRs are indexes such as 0-23 or 0,7,16", param_hint="--pcrs") from None
    if not out or any(not 0 <= p <= 23 for p in out):
        raise click.BadParameter("PCR indexes are 0..23", param_hint="--pcrs")
    return tuple(sorted(out))
