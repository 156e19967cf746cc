"""``kubeshield posture``: every way a cluster's Secrets can leak, Pod Security admission, repository scan.

\b
kubeshield posture [--kubeconfig F | --from-dir DIR] [-o table|json|sarif]
kubeshield posture pss check FILE... --level baseline|restricted --version v1.N|latest [-o table|json]
kubeshield posture pss webhook --tls-cert F --tls-key F [--listen HOST:PORT] [--config F] [--namespaces F]
kubeshield posture scan PATH... [--git-history] [--config gitleaks.toml] [--baseline F] [-o table|json|sarif]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from kubeshield import __version__
from kubeshield.cli._common import EXIT_FAILURE, CLIError, option
from kubeshield.errors import KubeshieldError

__all__ = ["group"]

_OUTPUT = click.Choice(["table", "json", "sarif"])


@click.group(name="posture", invoke_without_command=True)
@option(
    "--from-dir", type=click.Path(exists=True, file_okay=False), help="Audit exported objects and node files."
)
@option("--kubeconfig", type=click.Path(dir_okay=False), help="Audit a live cluster through its API.")
@option("--context", help="kubeconfig context (live mode).")
@option(
    "--kms-socket",
    type=click.Path(),
    multiple=True,
    help="Check a kubeshield KMS plugin's health (repeatable).",
)
@option(
    "--etcd-snapshot",
    type=click.Path(exists=True, dir_okay=False),
    help="Find stale key_ids in this etcd snapshot.",
)
@option(
    "--encryption-config",
    type=click.Path(exists=True, dir_okay=False),
    help="EncryptionConfiguration for --etcd-snapshot (else the one in --from-dir).",
)
@option(
    "--relay-cert",
    type=click.Path(exists=True, dir_okay=False),
    multiple=True,
    help="Relay/replica certificate to check for expiry (repeatable).",
)
@option(
    "--cert-warn-days",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Warn when a certificate expires within this many days.",
)
@option(
    "--seal-config",
    type=click.Path(exists=True, dir_okay=False),
    help="kubeshield.yaml whose seal: section names the sealing-key registry (checks key age).",
)
@option("-o", "--output", type=_OUTPUT, default="table", show_default=True)
@click.pass_context
def group(ctx: click.Context, /, **params: Any) -> int | None:
    """Show every way the cluster's Secrets can leak: encryption at rest, audit logging, RBAC, pods,
    kubelets and the kubeshield pieces. Exit 1 when there are findings or errors.

    \b
    Examples:
      kubectl get ns,pods,deploy,sa,roles,rolebindings -A -o yaml > dump/objects.yaml
      kubectl get clusterroles,clusterrolebindings -o yaml > dump/rbac.yaml
      cp /etc/kubernetes/manifests/kube-apiserver.yaml /etc/kubernetes/enc/*.yaml dump/node/
      kubeshield posture --from-dir dump/ -o sarif > posture.sarif
    """
    if ctx.invoked_subcommand is not None:
        return None
    from kubeshield.posture.audit import AuditInputs, run_audit

    if params["from_dir"] and params["kubeconfig"]:
        raise click.UsageError("give either --from-dir or --kubeconfig, not both")
    if not params["from_dir"] and not params["kubeconfig"]:
        raise click.UsageError("give --from-dir DIR (exported objects) or --kubeconfig FILE (live cluster)")
    inputs = AuditInputs(
        from_dir=params["from_dir"],
        kubeconfig=params["kubeconfig"],
        context=params["context"],
        kms_sockets=tuple(params["kms_socket"]),
        etcd_snapshot=params["etcd_snapshot"],
        encryption_config=params["encryption_config"],
        relay_certs=tuple(params["relay_cert"]),
        cert_warn_days=params["cert_warn_days"],
        seal_config=params["seal_config"],
    )
    try:
        report = run_audit(inputs)
    except KubeshieldError as exc:
        raise CLIError(f"{type(exc).__name__}: {exc}") from exc
    _emit(report, params["output"], title="kubeshield posture")
    return EXIT_FAILURE if report.findings or report.errors else 0


def _emit(report: Any, output: str, *, title: str) -> None:
    from kubeshield.posture.findings import to_json, to_sarif

    if output == "json":
        click.echo(to_json(report))
    elif output == "sarif":
        click.echo(to_sarif(report, tool="kubeshield", version=__version__))
    else:
        _table(report, title=title)


def _table(report: Any, *, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from kubeshield.posture.findings import severity_counts

    console = Console(soft_wrap=True)
    if report.findings:
        table = Table(title=title, show_lines=False)
        for column in ("severity", "id", "where", "finding and fix"):
            table.add_column(column, overflow="fold")
        for f in report.sorted():
            what = f.title
            if f.evidence and f.evidence not in f.title:
                what += f" ({f.evidence})"
            if f.excerpt:
                what += f"\n  {f.excerpt}"
            table.add_row(f.severity, f.id, f.location, f"{what}\nfix: {f.fix}")
        console.print(table, markup=False)
    counts = severity_counts(report.findings)
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no findings"
    console.print(
        f"{len(report.findings)} findings ({summary}); {len(report.errors)} errors", highlight=False
    )
    for error in report.errors:
        console.print(f"error: {error}", highlight=False, markup=False)


# -- pss ----------------------------------------------------------------------------------------------------


@group.group("pss")
def pss_group() -> None:
    """Pod Security Standards exactly as upstream pod-security-admission evaluates them."""


def _level_version(level: str, version: str) -> Any:
    from kubeshield.posture.pss import LevelVersion, parse_version

    parsed, err = parse_version(version)
    if err:
        raise click.BadParameter(err, param_hint="--version")
    return LevelVersion(level, parsed)


@pss_group.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@option("--level", type=click.Choice(["baseline", "restricted"]), required=True)
@option(
    "--version", "policy_version", default="latest", show_default=True, help="Policy version: v1.N or latest."
)
@option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def pss_check(files: tuple[str, ...], level: str, policy_version: str, output: str) -> int:
    """Evaluate every pod and pod template (Deployment, CronJob, ...) in FILES.

    Exit 0 when every document is allowed, 1 otherwise (or when a file cannot be read).

    \b
    Examples:
      kubeshield posture pss check deploy.yaml --level restricted --version v1.30
      helm template ./chart | kubeshield posture pss check /dev/stdin --level baseline -o json
    """
    from kubeshield.posture.pss.files import check_files

    lv = _level_version(level, policy_version)
    results, errors = check_files(files, lv)
    if output == "json":
        click.echo(json.dumps([r.to_json() for r in results], indent=2))
    else:
        for r in results:
            where = f"{r.file}: {r.kind} {r.name}".rstrip()
            if r.skipped:
                continue
            if r.error:
                click.echo(f"ERROR   {where}: {r.error}")
            elif r.allowed:
                click.echo(f"allowed {where} ({lv})")
            else:
                click.echo(f'DENIED  {where}: violates PodSecurity "{lv}":')
                for v in r.violations:
                    click.echo(f"          {v.check}: {v.message}")
    for error in errors:
        click.echo(f"error: {error}", err=True)
    return EXIT_FAILURE if errors or any(not r.allowed for r in results) else 0


@pss_group.command("webhook")
@option("--listen", default="0.0.0.0:8443", show_default=True, help="HOST:PORT to serve HTTPS on.")
@option("--tls-cert", type=click.Path(exists=True, dir_okay=False), required=True)
@option("--tls-key", type=click.Path(exists=True, dir_okay=False), required=True)
@option(
    "--client-ca",
    type=click.Path(exists=True, dir_okay=False),
    help="Require client certificates from this CA.",
)
@option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="PodSecurityConfiguration (defaults, exemptions).",
)
@option(
    "--namespaces",
    type=click.Path(exists=True),
    multiple=True,
    help="Namespace objects (file or dir; re-read on change).",
)
@option(
    "--kubeconfig",
    type=click.Path(dir_okay=False),
    help="Read namespace labels through the API (this kubeconfig).",
)
@option("--context", help="kubeconfig context.")
@option(
    "--in-cluster", is_flag=True, help="Read namespace labels through the API as the pod's ServiceAccount."
)
def pss_webhook(**params: Any) -> int:
    """Serve the Pod Security validating webhook (AdmissionReview v1 over HTTPS).

    Pods are denied by the namespace's enforce level, objects that embed a pod get warnings (warn) and
    audit annotations (audit), as kube-apiserver's built-in PodSecurity admission does.

    Namespace labels come from the API (--in-cluster in a pod, or --kubeconfig), or from exported
    Namespace objects (--namespaces, re-read when they change).

    \b
    Examples:
      kubeshield posture pss webhook --tls-cert tls.crt --tls-key tls.key --config psa.yaml --in-cluster
      kubeshield posture pss webhook --tls-cert tls.crt --tls-key tls.key --namespaces namespaces.yaml
    """
    from kubeshield.posture.pss.admission import Admission, AdmissionConfig, load_admission_config
    from kubeshield.posture.pss.webhook import FileNamespaces, WebhookServer, json_log

    host, _, port = params["listen"].rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter("expected HOST:PORT", param_hint="--listen")
    sources = [bool(params["namespaces"]), bool(params["kubeconfig"]), params["in_cluster"]]
    if sum(sources) != 1:
        raise click.UsageError(
            "give exactly one of --namespaces FILE|DIR, --kubeconfig FILE, --in-cluster "
            "(where namespace labels come from)"
        )
    try:
        config = load_admission_config(params["config_path"]) if params["config_path"] else AdmissionConfig()
        namespaces: Any
        if params["namespaces"]:
            namespaces = FileNamespaces(params["namespaces"])
        else:
            from kubeshield.kube import KubeClient
            from kubeshield.posture.pss.live import KubeNamespaces

            client = (
                KubeClient.from_kubeconfig(params["kubeconfig"], context=params["context"])
                if params["kubeconfig"]
                else KubeClient.in_cluster()
            )
            namespaces = KubeNamespaces(client)
        admission = Admission(namespaces=namespaces, config=config, log=json_log)
        server = WebhookServer(
            admission,
            host=host.strip("[]"),
            port=int(port),
            cert=params["tls_cert"],
            key=params["tls_key"],
            client_ca=params["client_ca"],
        )
    except KubeshieldError as exc:
        raise CLIError(f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise CLIError(f"cannot listen on {params['listen']}: {exc.strerror or exc}") from exc
    _serve_until_signal(server)
    return 0


def _serve_until_signal(server: Any) -> None:
    import signal
    import threading

    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    server.start()
    from kubeshield.posture.pss.webhook import json_log

    host, port = server.address
    json_log("pss webhook serving", address=f"{host}:{port}")
    print(f"https://{host}:{port}", flush=True)
    stop.wait()
    server.stop()


# -- scan ---------------------------------------------------------------------------------------------------


@group.command("scan")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@option(
    "--git-history",
    is_flag=True,
    help="Also scan every commit reachable from every ref (PATH is a repository).",
)
@option(
    "--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="gitleaks TOML rule file."
)
@option("--baseline", type=click.Path(dir_okay=False), help="Findings listed in this file are accepted.")
@option(
    "--write-baseline",
    type=click.Path(dir_okay=False),
    help="Write the current findings as a baseline and exit 0.",
)
@option(
    "--max-file-size",
    type=click.IntRange(min=1),
    default=1024 * 1024,
    show_default=True,
    help="Skip files larger than this (bytes).",
)
@option("-o", "--output", type=_OUTPUT, default="table", show_default=True)
def scan_cmd(paths: tuple[str, ...], **params: Any) -> int:
    """Find Secrets in the clear in files and Git history: Kubernetes-aware first (Secret manifests,
    rendered Helm output, kustomize generators, kubeconfigs, SOPS files, SealedSecrets), then generic
    credentials. Findings show a fingerprint and a redacted excerpt, never the secret.

    \b
    Examples:
      kubeshield posture scan . --git-history -o sarif > scan.sarif
      kubeshield posture scan . --config .gitleaks.toml --baseline .kubeshield-baseline.json
    """
    try:
        from kubeshield.posture.scan import ScanOptions, load_baseline, scan, write_baseline
    except ModuleNotFoundError as exc:
        if exc.name not in ("re2", "pygit2"):
            raise
        raise CLIError(
            f"the repository scan needs {exc.name} (RE2 rule semantics, Git history): "
            "pip install 'kubeshield[posture]'"
        ) from None

    try:
        options = ScanOptions(
            git_history=params["git_history"],
            config=params["config_path"],
            max_file_size=params["max_file_size"],
        )
        report = scan([Path(p) for p in paths], options)
        if params["write_baseline"]:
            write_baseline(Path(params["write_baseline"]), report)
            click.echo(f"wrote {len(report.findings)} findings to {params['write_baseline']}", err=True)
            return 0
        if params["baseline"]:
            accepted = load_baseline(Path(params["baseline"]))
            report.findings = [f for f in report.findings if f.fingerprint not in accepted]
    except KubeshieldError as exc:
        raise CLIError(f"{type(exc).__name__}: {exc}") from exc
    _emit(report, params["output"], title="kubeshield posture scan")
    return EXIT_FAILURE if report.findings or report.errors else 0
