"""A custody caller built from the standard library only, so any uid can run it with /usr/bin/python3.

The tests copy this file to a world-readable directory and run it with the system interpreter (the
project's venv lives under /root, which uid 65534 cannot read). It speaks the custody framing by hand
and writes what it saw to a result file, one line: ``greeting=<STATUS|none> answer=<STATUS|closed>``.

    python3 _caller_script.py MODE SOCKET RESULT VERSION GREETING [EXE ARGS...]

MODE       plain               connect, (greeting), KEY_ID, record
           fd-to-child         connect, fork a child that does (greeting) + KEY_ID, the parent execs EXE
           early-request       connect, send KEY_ID at once, fork a child that reads the answer, the
                               parent execs EXE
           exec-after-admit    connect, greeting, KEY_ID (recorded as first=...), then exec this same
                               interpreter, which sends KEY_ID on the inherited socket (second=...)
           move-cgroup         connect, greeting, KEY_ID (first=...), write its pid to the cgroup.procs
                               file EXE, KEY_ID again (second=...)
VERSION    the protocol version byte to send (2 today; 1 to probe an old custody process)
GREETING   1 to read the server's greeting before sending, 0 not to (an old custody process sends none)
"""

from __future__ import annotations

import os
import socket
import struct
import sys

STATUS = {0: "OK", 1: "PROTOCOL_ERROR", 2: "PERMISSION_DENIED", 5: "UNAVAILABLE", 7: "INTERNAL"}


def key_id_frame(version: int) -> bytes:
    return struct.pack(">I", 3) + bytes([version, 3, 0])


def read_status(sock: socket.socket) -> str:
    try:
        header = b""
        while len(header) < 4:
            chunk = sock.recv(4 - len(header))
            if not chunk:
                return "closed"
            header += chunk
        (length,) = struct.unpack(">I", header)
        body = b""
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                return "closed"
            body += chunk
    except OSError:
        return "closed"
    return STATUS.get(body[1], f"status-{body[1]}")


def write(result: str, text: str) -> None:
    with open(result, "w") as fh:
        fh.write(text + "\n")


def ask(sock: socket.socket, version: int, greeting: bool) -> str:
    first = read_status(sock) if greeting else "none"
    if greeting and first != "OK":
        return f"greeting={first} answer=closed"
    try:
        sock.sendall(key_id_frame(version))
    except OSError:
        return f"greeting={first} answer=closed"
    return f"greeting={first} answer={read_status(sock)}"


def main() -> None:
    mode, path, result, version, greeting = sys.argv[1:6]
    exe_argv = sys.argv[6:]
    v, g = int(version), greeting == "1"
    if mode == "after-exec":  # the re-executed interpreter: argv = after-exec FD RESULT VERSION FIRST
        fd, first = int(path), sys.argv[5]
        sock = socket.socket(fileno=fd)
        sock.settimeout(30)
        try:
            sock.sendall(key_id_frame(v))
            second = read_status(sock)
        except OSError:
            second = "closed"
        write(result, f"first={first} second={second}")
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(path)
    if mode == "plain":
        write(result, ask(sock, v, g))
    elif mode == "fd-to-child":
        if os.fork() == 0:
            try:
                write(result, ask(sock, v, g))
            finally:
                os._exit(0)
        os.execv(exe_argv[0], exe_argv)
    elif mode == "early-request":
        sock.sendall(key_id_frame(v))
        if os.fork() == 0:
            try:
                write(result, f"greeting=none answer={read_status(sock)}")
            finally:
                os._exit(0)
        os.execv(exe_argv[0], exe_argv)
    elif mode == "exec-after-admit":
        answer = ask(sock, v, g)
        first = answer.split("answer=")[1]
        os.set_inheritable(sock.fileno(), True)
        me = os.path.abspath(__file__)
        os.execv(
            sys.executable, [sys.executable, me, "after-exec", str(sock.fileno()), result, version, first]
        )
    elif mode == "move-cgroup":
        first = ask(sock, v, g).split("answer=")[1]
        with open(exe_argv[0], "w") as procs:
            procs.write(str(os.getpid()))
        try:
            sock.sendall(key_id_frame(v))
            second = read_status(sock)
        except OSError:
            second = "closed"
        write(result, f"first={first} second={second}")
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
