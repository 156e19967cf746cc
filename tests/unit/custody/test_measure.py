"""Measuring reads only regular files, never follows a planted symlink, and stays within its budgets."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest

from kubeshield.custody.measure import (
    ExeDigests,
    MeasurementError,
    measure_pid,
    process_start_time,
    process_uid_gid,
    read_regular,
)


def test_a_fifo_named_py_is_refused_at_once_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "evil.py"
    os.mkfifo(fifo)
    with pytest.raises(MeasurementError, match="not a regular file"):
        read_regular(str(fifo))  # O_NONBLOCK open, then fstat: a FIFO with no writer cannot block us


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "real.py"
    target.write_text("x = 1\n")
    link = tmp_path / "link.py"
    link.symlink_to(target)
    with pytest.raises(MeasurementError, match="symbolic link"):
        read_regular(str(link))
    assert read_regular(str(target))[0] == b"x = 1\n"


def test_a_directory_or_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match="not a regular file"):
        read_regular(str(tmp_path))
    with pytest.raises(MeasurementError, match="not a regular file"):
        read_regular("/dev/zero")  # would never end


def test_size_budget_also_for_files_that_report_size_zero(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"a" * 5000)
    with pytest.raises(MeasurementError, match="larger than 4096 bytes"):
        read_regular(str(big), max_bytes=4096)
    # /proc files report st_size 0: the limit counts what is actually read
    with pytest.raises(MeasurementError, match="larger than 16 bytes"):
        read_regular(f"/proc/{os.getpid()}/status", max_bytes=16)


def test_time_budget_with_an_injected_clock(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"b" * (3 << 20))  # three chunks
    ticks = iter([0.0, 0.0, 0.5, 2.0, 9.0])
    with pytest.raises(MeasurementError, match="longer than 1s"):
        read_regular(str(f), max_bytes=10 << 20, budget=1.0, clock=lambda: next(ticks))


def test_exe_digest_is_cached_by_identity_and_renewed_when_the_file_changes(tmp_path: Path) -> None:
    exe = tmp_path / "tool"
    exe.write_bytes(b"version one")
    digests = ExeDigests()
    first, ident = digests.of(str(exe))
    assert first == hashlib.sha256(b"version one").hexdigest()
    assert ident == (exe.stat().st_dev, exe.stat().st_ino)
    with open(exe, "r+b") as fh:  # changed in place: same inode, new content, size and ctime
        fh.write(b"VERSION one, patched")
    assert digests.of(str(exe)) == (hashlib.sha256(b"VERSION one, patched").hexdigest(), ident)


def test_exe_digest_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(MeasurementError, match="not a regular file"):
        ExeDigests().of(str(fifo))


def test_process_facts_of_this_process() -> None:
    assert process_uid_gid(os.getpid()) == (os.getuid(), os.geteuid(), os.getgid(), os.getegid())
    assert process_start_time(os.getpid()) > 0
    me = measure_pid(os.getpid(), os.getuid(), os.getgid())
    assert me.exe == os.path.realpath(f"/proc/{os.getpid()}/exe")
    assert "package" not in " ".join(me.__slots__)  # no digest of caller-chosen files any more


def test_a_python_caller_with_a_fifo_in_its_package_does_not_hang_the_measurement(tmp_path: Path) -> None:
    """Regression: the old package digest read every *.py of the caller's venv, FIFOs included.

    The caller is a venv-shaped interpreter (argv[0] under a directory with pyvenv.cfg) whose
    site-packages/kubeshield holds a FIFO named evil.py. Measuring it must return, and without
    reading anything from that directory.
    """
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "bin" / "python").symlink_to("/usr/bin/python3")
    package = venv / "lib" / "python3.11" / "site-packages" / "kubeshield"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    os.mkfifo(package / "evil.py")
    caller = subprocess.Popen([str(venv / "bin" / "python"), "-c", "import time; time.sleep(60)"])
    outcome: list[object] = []
    try:
        worker = threading.Thread(target=lambda: outcome.append(measure_pid(caller.pid, 0, 0)), daemon=True)
        worker.start()
        worker.join(60)
        hung = worker.is_alive()
        if hung:  # let the old code's blocked open() go, so the test process can end
            fd = os.open(package / "evil.py", os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        assert not hung, "measuring the caller blocked on a FIFO"
        assert outcome and outcome[0].exe == os.path.realpath("/usr/bin/python3")  # type: ignore[attr-defined]
    finally:
        caller.kill()
        caller.wait()
