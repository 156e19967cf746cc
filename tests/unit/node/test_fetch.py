"""What the injected init container writes: formats, dotenv a real shell sources, modes, kubelet layouts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.errors import InvalidRequest
from kubeshield.node.fetch import FetchPlan, env_name, read_sealed_dir, render, write_outputs


def plan(tmp_path: Path, **kw) -> FetchPlan:
    return FetchPlan(token_file=tmp_path / "t", sealed_dir=tmp_path / "s", out_dir=tmp_path / "o", **kw)


def test_formats(tmp_path: Path) -> None:
    values = {"db-password": b"p@ss 'quoted'\nline2", "api.key": b"k"}
    assert render(values, plan(tmp_path, files={"db-password": "db/password"})) == {
        "db/password": values["db-password"],
        "api.key": b"k",
    }
    doc = json.loads(render(values, plan(tmp_path, format="json"))["secrets.json"])
    assert doc == {"db-password": "p@ss 'quoted'\nline2", "api.key": "k"}
    dotenv = render(values, plan(tmp_path, format="dotenv", output_file="app.env"))
    assert set(dotenv) == {"app.env"}
    with pytest.raises(InvalidRequest, match="not UTF-8"):
        render({"bin": b"\xff"}, plan(tmp_path, format="json"))
    with pytest.raises(InvalidRequest, match="NUL"):
        render({"n": b"a\x00b"}, plan(tmp_path, format="dotenv"))
    assert env_name("db-password.v2") == "DB_PASSWORD_V2" and env_name("1st") == "_1ST"


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
        st.text(alphabet=st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=30),
        min_size=1,
        max_size=4,
    )
)
@settings(max_examples=40)
def test_a_posix_shell_reads_back_exactly_what_was_written(tmp_path_factory, values: dict[str, str]) -> None:
    tmp = tmp_path_factory.mktemp("env")
    names = {env_name(n) for n in values}
    if len(names) != len(values):
        return
    path = tmp / "secrets.env"
    path.write_bytes(
        render({k: v.encode() for k, v in values.items()}, plan(tmp, format="dotenv"))["secrets.env"]
    )
    script = 'set -a; . "$1"; set +a; ' + "; ".join(
        f'printf "%s\\0" "${env_name(n)}"' for n in sorted(values)
    )
    out = subprocess.run(["/bin/sh", "-c", script, "sh", str(path)], capture_output=True, check=True).stdout
    assert out.split(b"\0")[:-1] == [values[n].encode() for n in sorted(values)]


def test_files_are_written_0400_atomically_and_only_when_changed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert write_outputs(out, {"a": b"1", "d/b": b"2"}) == ["a", "d/b"]
    assert stat.S_IMODE(os.stat(out / "a").st_mode) == 0o400 and (out / "d" / "b").read_bytes() == b"2"
    assert stat.S_IMODE(os.stat(out / "d").st_mode) == 0o700
    assert write_outputs(out, {"a": b"1", "d/b": b"2"}) == []
    assert write_outputs(out, {"a": b"changed", "d/b": b"2"}) == ["a"]
    assert (out / "a").read_bytes() == b"changed" and not [
        p for p in os.listdir(out) if p.startswith(".kubeshield")
    ]


def test_sealed_dir_in_the_kubelets_projected_layout(tmp_path: Path) -> None:
    # a projected volume: <dir>/..<timestamp>/sealed/<files>, ..data -> ..<timestamp>, sealed -> ..data/sealed
    ts = tmp_path / "vol" / "..2026_01_01_00_00_00.123"
    (ts / "sealed").mkdir(parents=True)
    (ts / "sealed" / "db").write_text("kubeshield:node:v1:AAAA\n")
    (ts / "sealed" / "api").write_text("kubeshield:node:v1:BBBB")
    os.symlink(ts.name, tmp_path / "vol" / "..data")
    os.symlink("..data/sealed", tmp_path / "vol" / "sealed")
    assert read_sealed_dir(tmp_path / "vol" / "sealed") == [
        ("api", "kubeshield:node:v1:BBBB"),
        ("db", "kubeshield:node:v1:AAAA"),
    ]
    (ts / "sealed" / "..data").mkdir()  # kubelet bookkeeping inside the dir is skipped
    assert len(read_sealed_dir(tmp_path / "vol" / "sealed")) == 2
    with pytest.raises(InvalidRequest, match="no sealed values"):
        read_sealed_dir(ts)
    with pytest.raises(InvalidRequest, match="cannot list"):
        read_sealed_dir(tmp_path / "missing")


def test_output_paths_stay_inside(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="without"):
        render({"a": b"1"}, plan(tmp_path, files={"a": "../../etc/x"}))
