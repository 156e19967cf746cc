"""An agent caller built from the standard library only, so that any uid can run it with /usr/bin/python3.

The tests copy it to a world-readable directory (the project's venv is not readable by uid 65534) and
run it as another user. It sends one ``status`` request in the agent's framing and writes the answer
(JSON, or ``closed``/``error: ...``) to a result file.

    python3 access_caller.py SOCKET RESULT
"""

from __future__ import annotations

import json
import socket
import struct
import sys


def main() -> None:
    path, result = sys.argv[1], sys.argv[2]
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(path)
        body = json.dumps({"v": 1, "op": "status"}).encode()
        try:
            sock.sendall(struct.pack(">I", len(body)) + body)
        except BrokenPipeError:
            pass  # refused at connect: the agent's answer waits to be read
        header = b""
        while len(header) < 4:
            chunk = sock.recv(4 - len(header))
            if not chunk:
                raise EOFError
            header += chunk
        (length,) = struct.unpack(">I", header)
        answer = b""
        while len(answer) < length:
            chunk = sock.recv(length - len(answer))
            if not chunk:
                raise EOFError
            answer += chunk
        text = answer.decode()
    except EOFError:
        text = "closed"
    except OSError as exc:
        text = f"error: {exc.strerror or exc}"
    with open(result, "w") as fh:
        fh.write(text + "\n")


if __name__ == "__main__":
    main()
