"""``kubeshield posture scan``: walk a tree (and optionally its Git history) and report credentials.

Files are read as bytes; a file over ``max_file_size`` or with a NUL byte in its first 8 KiB (binary) is
skipped and listed in ``skipped``; an unreadable path is an error; the run goes on. Kubernetes-aware checks
run first on YAML/JSON files that look like Kubernetes objects (and on kubeconfigs); generic credential
rules run on every text file. When both find the same line, the Kubernetes-aware finding wins.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kubeshield.posture.findings import Finding, Report, fingerprint, redact
from kubeshield.posture.scan.detect import Detector, Hit
from kubeshield.posture.scan.k8s import K8sHit, looks_kubernetes, scan_kubernetes
from kubeshield.posture.scan.rules import DEFAULT_RULES, RuleSet, load_rules

__all__ = ["ScanOptions", "ScanReport", "Scanner", "scan"]

_K8S_SUFFIXES = (".yaml", ".yml", ".json")
_SKIP_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", ".venv", "__pycache__"})


@dataclass(frozen=True)
class ScanOptions:
    git_history: bool = False
    config: str | Path | None = None
    max_file_size: int = 1024 * 1024


@dataclass
class ScanReport(Report):
    files: int = 0
    bytes: int = 0


def excerpt(line: bytes | str, secret: str, *, width: int = 160) -> str:
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    first = secret.splitlines()[0] if secret.splitlines() else secret
    masked = text.replace(first, redact(first)) if first else text
    if first and first not in text:
        masked = redact(first)
    masked = masked.strip()
    return masked if len(masked) <= width else masked[: width - 1] + "…"


def _is_helm_template(path: Path) -> bool:
    parts = path.parts
    if "templates" not in parts:
        return False
    chart_dir = Path(*parts[: len(parts) - 1 - parts[::-1].index("templates")])
    return (chart_dir / "Chart.yaml").is_file()


def _is_kubeconfig_name(path: Path) -> bool:
    return path.name in ("config", "kubeconfig") or path.suffix == ".kubeconfig"


class Scanner:
    def __init__(self, options: ScanOptions = ScanOptions()) -> None:
        self.options = options
        rules: RuleSet = load_rules(options.config) if options.config else DEFAULT_RULES
        self.detector = Detector(rules)

    # -- findings ---------------------------------------------------------------------------------------

    def _from_hit(self, hit: Hit, where: str, *, commit: str | None) -> Finding:
        secret = hit.secret.decode("utf-8", "replace")
        evidence = f"rule {hit.rule.id}" + (f", commit {commit[:12]}" if commit else "")
        return Finding(
            id="KS-SCAN-CREDENTIAL",
            rule=hit.rule.id,
            severity=hit.rule.severity,
            title=hit.rule.description,
            fix="Remove it from the repository, rotate it (it stays in the history), and load it at run time "
            "from a Secret store",
            file=where,
            line=hit.line or None,
            excerpt=excerpt(hit.line_text, secret) if hit.secret else "",
            evidence=evidence,
            fingerprint=fingerprint("KS-SCAN-CREDENTIAL", hit.rule.id, where, secret),
        )

    def _from_k8s(self, hit: K8sHit, where: str, *, commit: str | None) -> Finding:
        shown = ""
        if hit.shown:
            key, sep, value = hit.shown.partition(": ") if ": " in hit.shown else hit.shown.partition("=")
            shown = f"{key}{sep}{redact(value)}" if sep else redact(hit.shown)
        return Finding(
            id=hit.id,
            rule=hit.rule,
            severity=hit.severity,
            title=hit.title,
            fix=hit.fix,
            file=hit.extra_file or where,
            line=hit.line if hit.extra_file is None else None,
            excerpt=shown,
            evidence=hit.evidence + (f" (commit {commit[:12]})" if commit else ""),
            fingerprint=fingerprint(hit.id, hit.rule, hit.extra_file or where, hit.secret),
        )

    def scan_bytes(
        self, data: bytes, where: str, *, path: Path, root: Path, commit: str | None = None
    ) -> list[Finding]:
        """Findings in one file's content. ``where`` is how the file is named in findings."""
        out: list[Finding] = []
        k8s_lines: set[int] = set()
        if (path.suffix in _K8S_SUFFIXES or _is_kubeconfig_name(path)) and looks_kubernetes(data):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if text is not None:
                for k8s in scan_kubernetes(where, text, root=root, helm_template=_is_helm_template(path)):
                    out.append(self._from_k8s(k8s, where, commit=commit))
                    k8s_lines.add(k8s.line)
        hits = [h for h in self.detector.scan(data, where, commit=commit) if h.line not in k8s_lines]
        specific = [h for h in hits if "generic" not in h.rule.id]
        for hit in hits:
            if "generic" in hit.rule.id and any(
                s.line == hit.line and (s.secret in hit.secret or hit.secret in s.secret) for s in specific
            ):
                continue  # a specific rule found the same secret (gitleaks drops the generic one too)
            out.append(self._from_hit(hit, where, commit=commit))
        return out

    # -- the tree ---------------------------------------------------------------------------------------

    def _walk(self, root: Path, report: ScanReport) -> Iterator[Path]:
        stack = [root]
        while stack:
            directory = stack.pop()
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError as exc:
                report.errors.append(f"{directory}: cannot list: {exc.strerror or exc}")
                continue
            subdirs = []
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name not in _SKIP_DIRS:
                            subdirs.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        yield Path(entry.path)
                except OSError as exc:
                    report.errors.append(f"{entry.path}: {exc.strerror or exc}")
            stack.extend(reversed(subdirs))

    def scan_tree(self, root: Path, report: ScanReport) -> None:
        if not root.exists():
            report.errors.append(f"{root}: no such file or directory")
            return
        files = [root] if root.is_file() else self._walk(root, report)
        base = root.parent if root.is_file() else root
        limit = self.options.max_file_size
        for path in files:
            where = str(path) if root.is_file() else str(Path(root) / path.relative_to(root))
            relative = str(path.relative_to(base))
            if self.detector.path_allowed(relative):
                continue
            try:
                size = path.stat().st_size
                if size > limit:
                    report.skipped.append(f"{where}: {size} bytes, over --max-file-size {limit}")
                    continue
                with path.open("rb") as fh:
                    data = fh.read()
            except OSError as exc:
                report.errors.append(f"{where}: cannot read: {exc.strerror or exc}")
                continue
            report.files += 1
            report.bytes += len(data)
            if b"\x00" in data[:8192]:
                report.skipped.append(f"{where}: binary")
                continue
            report.findings.extend(self.scan_bytes(data, where, path=path, root=base))


def scan(paths: list[Path], options: ScanOptions = ScanOptions()) -> ScanReport:
    """Scan each path (file or directory), and with ``git_history`` each path's repository history."""
    scanner = Scanner(options)
    report = ScanReport()
    for root in paths:
        scanner.scan_tree(root, report)
        if options.git_history:
            from kubeshield.posture.scan.history import scan_history

            scan_history(scanner, root, report)
    seen: dict[str, Finding] = {}
    for f in report.findings:
        seen.setdefault(f.fingerprint, f)  # working-tree findings come first and win
    report.findings = list(seen.values())
    return report
