"""Scan every commit reachable from every ref of a Git repository, with libgit2 (pygit2): each commit's
diff against its first parent (the root commit against the empty tree) is read in process; only added
lines are scanned by the generic rules, and the new version of each changed YAML/JSON file by the
Kubernetes-aware checks (so a Secret committed once and deleted later is still found)."""

from __future__ import annotations

from pathlib import Path

import pygit2

from kubeshield.posture.scan.scanner import Scanner, ScanReport

__all__ = ["scan_history"]

_K8S_SUFFIXES = (".yaml", ".yml", ".json")


def scan_history(scanner: Scanner, root: Path, report: ScanReport) -> None:
    try:
        found = pygit2.discover_repository(str(root))
        if found is None:
            report.errors.append(f"{root}: --git-history: not inside a Git repository")
            return
        repo = pygit2.Repository(found)
    except pygit2.GitError as exc:
        report.errors.append(f"{root}: --git-history: cannot open the repository: {exc}")
        return
    tips = []
    for ref_name in repo.references:
        try:
            target = repo.references[ref_name].peel(pygit2.Commit)
        except (pygit2.GitError, ValueError, KeyError):
            continue
        tips.append(target.id)
    if not tips:
        return
    walker = repo.walk(tips[0], pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.TIME)
    for tip in tips[1:]:
        walker.push(tip)
    label = str(root)
    for commit in walker:
        sha = str(commit.id)
        try:
            if commit.parents:
                diff = repo.diff(commit.parents[0], commit, context_lines=0)
            else:
                diff = commit.tree.diff_to_tree(swap=True, context_lines=0)
        except pygit2.GitError as exc:
            report.errors.append(f"{label}: commit {sha[:12]}: cannot diff: {exc}")
            continue
        for patch in diff:
            if patch is None:
                continue
            delta = patch.delta
            if delta.status == pygit2.enums.DeltaStatus.DELETED or delta.is_binary:
                continue
            path = delta.new_file.path
            where = f"{label.rstrip('/')}/{path}" if label not in (".", "") else path
            if scanner.detector.path_allowed(path):
                continue
            blob = repo.get(delta.new_file.id)
            if blob is None or not isinstance(blob, pygit2.Blob):
                continue
            if blob.size > scanner.options.max_file_size or blob.is_binary:
                continue
            added: dict[int, bytes] = {}
            for hunk in patch.hunks:
                for line in hunk.lines:
                    if line.origin == "+":
                        added[line.new_lineno] = line.raw_content.rstrip(b"\n")
            if not added:
                continue
            data = blob.data
            findings = scanner.scan_bytes(
                data, where, path=Path(path), root=Path(repo.workdir or root), commit=sha
            )
            report.findings.extend(f for f in findings if f.line is None or f.line in added)
