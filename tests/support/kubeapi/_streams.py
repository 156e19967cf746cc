"""The streaming subresources of pods: ``exec``, ``attach`` and ``portforward``, as kubectl v1.35 uses them.

    pods = api.pods                                    # made by KubeAPI; these handlers are registered
    pod = pods.run("ns", "web", command=["cat"], stdin_once=True, ports={8080: echo_port})
    pod.directory                                      # exec runs here (cwd), for real
    pods.delete("ns", "web")                           # stops its process

A pod is a directory on this machine: ``exec`` runs the requested command for real with that
directory as its working directory (so ``kubectl exec``, ``kubectl cp`` (tar) and exit codes are real);
``attach`` attaches to the pod's one long-running process (``command`` of ``run``); ``portforward``
connects to the 127.0.0.1 port the test mapped to the container port. ``exec -t`` runs the command on
a pseudo-terminal of its own, sized as the client's terminal says (resize messages); ``attach`` has
no terminal (the pod's process runs on pipes).

Protocols, as client-go v1.35 speaks them (staging/src/k8s.io/client-go/tools/remotecommand and
tools/portforward):

* exec/attach over WebSocket, subprotocol ``v5.channel.k8s.io`` (kubectl's default): binary messages
  ``channel(1) data``, channels 0 stdin, 1 stdout, 2 stderr, 3 error (a ``metav1.Status`` JSON, with
  the exit code as a ``NonZeroExitCode`` cause), 4 resize; ``[255, channel]`` half-closes a channel.
* exec/attach over SPDY/3.1 (the fallback when the WebSocket upgrade is refused, or with
  ``KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false``): ``X-Stream-Protocol-Version`` v5/v4, one SPDY stream
  per channel named by its ``streamType`` header; the error stream carries the same Status JSON.
* port-forward over SPDY (``portforward.k8s.io``, with ``KUBECTL_PORT_FORWARD_WEBSOCKETS=false``) or
  over a WebSocket tunnelling the SPDY byte stream (subprotocol ``SPDY/3.1+portforward.k8s.io``,
  kubectl's default): per local connection a pair of streams, ``error`` and ``data``, sharing a
  ``requestID`` header and naming the container ``port``.

aiohttp only switches protocols for WebSocket, so a SPDY upgrade answers 101 itself and then takes
the connection over (``transport.set_protocol``); kubectl sends nothing before it reads the 101.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
import pty
import shutil
import signal
import struct
import termios
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from tests.support.kubeapi import _spdy
from tests.support.kubeapi._auth import Attributes, forbidden_status
from tests.support.kubeapi._status import ApiStatus, bad_request

if TYPE_CHECKING:
    from tests.support.kubeapi._server import KubeAPI, SubresourceContext

__all__ = ["Pod", "PodRuntime", "SpdySession", "SpdyStream"]

Obj = dict[str, Any]
_CHUNK = 32 * 1024
_STREAM_WAIT = 30.0  # for the client's streams after the upgrade, and for its GOAWAY at the end
_WS_EXEC = "v5.channel.k8s.io"
_SPDY_EXEC = ("v5.channel.k8s.io", "v4.channel.k8s.io")
_PORTFORWARD = "portforward.k8s.io"
_WS_TUNNEL = "SPDY/3.1+" + _PORTFORWARD
_STDIN, _STDOUT, _STDERR, _ERROR, _RESIZE, _CLOSE = 0, 1, 2, 3, 4, 255
_STREAM_TYPES = {"stdin": _STDIN, "stdout": _STDOUT, "stderr": _STDERR, "error": _ERROR, "resize": _RESIZE}


def _success() -> Obj:
    return {"metadata": {}, "status": "Success"}


def _exit_status(argv: Sequence[str], code: int) -> Obj:
    """The kubelet's Status for a non-zero exit (k8s.io/apimachinery/pkg/util/remotecommand)."""
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command {list(argv)}, "
        f"exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def _internal(message: str) -> Obj:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "code": 500,
        "details": {"causes": [{"message": message}]},
    }


# --- SPDY session ----------------------------------------------------------------------------------


class SpdyStream:
    """One SPDY stream of a server session: ``read`` until b"" (FIN or reset), ``write``, ``close``."""

    def __init__(self, session: SpdySession, stream_id: int, headers: Mapping[str, str]) -> None:
        self.session = session
        self.id = stream_id
        self.headers = dict(headers)
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._ended = False
        self.local_closed = False
        self.reset = False

    async def read(self) -> bytes:
        if self._ended and self._inbox.empty():
            return b""
        return await self._inbox.get()

    async def write(self, data: bytes) -> None:
        for start in range(0, len(data), _CHUNK):
            if self.local_closed or self.reset or self.session.closed.is_set():
                return
            self.session.send(_spdy.DataFrame(self.id, data[start : start + _CHUNK]))
            await self.session.drain()

    def close(self) -> None:
        """Half-close: FIN, this side sends no more."""
        if not (self.local_closed or self.reset or self.session.closed.is_set()):
            self.session.send(_spdy.DataFrame(self.id, b"", fin=True))
        self.local_closed = True

    def _deliver(self, data: bytes, fin: bool) -> None:
        if self._ended:
            return
        if data:
            self._inbox.put_nowait(data)
        if fin:
            self._ended = True
            self._inbox.put_nowait(b"")

    def _reset(self) -> None:
        self.reset = True
        self._deliver(b"", True)


class SpdySession:
    """The server end of a SPDY/3.1 session over any byte transport (``feed`` in, ``write`` out).

    Frames out are encoded at once (the header compressor is one ordered zlib stream) and queued
    to a single writer task, so a SYN_REPLY always precedes the data of its stream. PINGs from the
    client are echoed (client-go pings every few seconds); a GOAWAY, EOF or protocol error closes
    the session and ends every stream's reads."""

    def __init__(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        self._write = write
        self._encoder = _spdy.FrameEncoder()
        self._decoder = _spdy.FrameDecoder()
        self._out: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._new: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self.streams: dict[int, SpdyStream] = {}
        self.closed = asyncio.Event()
        self._last_id = 0
        self._writer = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        while True:
            chunk = await self._out.get()
            try:
                if chunk is None:
                    return
                await self._write(chunk)
            except (ConnectionError, RuntimeError):
                self._close()
            finally:
                self._out.task_done()

    def send(self, frame: _spdy.Frame) -> None:
        self._out.put_nowait(self._encoder.encode(frame))

    async def drain(self) -> None:
        if self._out.qsize() > 32:
            await self._out.join()

    async def accept(self) -> SpdyStream | None:
        """The next stream the client opens; None once the session is closed."""
        if self.closed.is_set() and self._new.empty():
            return None
        return await self._new.get()

    def feed(self, data: bytes) -> None:
        if self.closed.is_set():
            return
        try:
            frames = self._decoder.feed(data)
        except _spdy.FrameError:
            self.send(_spdy.GoAway(self._last_id, 1))  # PROTOCOL_ERROR
            self._close()
            return
        for frame in frames:
            self._on_frame(frame)

    def feed_eof(self) -> None:
        self._close()

    def _on_frame(self, frame: _spdy.Frame) -> None:
        if isinstance(frame, _spdy.SynStream):
            headers = {name: values[0] if values else "" for name, values in frame.headers}
            stream = SpdyStream(self, frame.stream_id, headers)
            self.streams[frame.stream_id] = stream
            self._last_id = max(self._last_id, frame.stream_id)
            self.send(_spdy.SynReply(frame.stream_id))
            if frame.fin:
                stream._deliver(b"", True)
            self._new.put_nowait(stream)
        elif isinstance(frame, _spdy.DataFrame):
            found = self.streams.get(frame.stream_id)
            if found is not None:
                found._deliver(frame.data, frame.fin)
        elif isinstance(frame, _spdy.RstStream):
            found = self.streams.pop(frame.stream_id, None)
            if found is not None:
                found._reset()
        elif isinstance(frame, _spdy.Ping):
            if frame.id % 2 == 1:  # client-initiated (odd): echo; our own pings are even
                self.send(frame)
        elif isinstance(frame, _spdy.GoAway):
            self._close()
        # SETTINGS, WINDOW_UPDATE, HEADERS, SYN_REPLY: spdystream has no flow control; ignored

    def _close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for stream in self.streams.values():
            stream._deliver(b"", True)
        self._new.put_nowait(None)

    async def aclose(self) -> None:
        """Flush what is queued and stop the writer (the transport is closed by the caller)."""
        if not self._writer.done():
            self._out.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await asyncio.wait_for(asyncio.shield(self._writer), _STREAM_WAIT)
        self._close()


class _TakeOver(asyncio.Protocol):
    """Feeds an upgraded connection's bytes to a SPDY session; keeps aiohttp's protocol informed of
    flow control and of the connection's end (so its server does not wait for it at shutdown)."""

    def __init__(self, session: SpdySession, previous: asyncio.BaseProtocol) -> None:
        self.session = session
        self.previous = previous
        self.writable = asyncio.Event()
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.session.feed(data)

    def eof_received(self) -> bool | None:
        self.session.feed_eof()
        return None

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.feed_eof()
        self.writable.set()
        self.previous.connection_lost(exc)


def _offered(request: web.Request, header: str) -> list[str]:
    return [p.strip() for value in request.headers.getall(header, []) for p in value.split(",") if p.strip()]


def _refuse(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message, content_type="text/plain")


class _Upgrade:
    """A connection switched to SPDY/3.1 or to a WebSocket carrying it; ``session`` speaks SPDY."""

    def __init__(
        self, response: web.StreamResponse, session: SpdySession, closer: Callable[[], Awaitable[None]]
    ):
        self.response = response
        self.session = session
        self._closer = closer

    async def close(self) -> None:
        await self.session.aclose()
        await self._closer()

    @classmethod
    async def spdy(cls, request: web.Request, protocol: str) -> _Upgrade:
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("the client went away before the upgrade")
        response = web.StreamResponse(
            status=101,
            headers={"Connection": "Upgrade", "Upgrade": "SPDY/3.1", "X-Stream-Protocol-Version": protocol},
        )
        response._length_check = (
            False  # no body framing after a 101 (aiohttp's WebSocketResponse does the same)
        )
        response.force_close()
        await response.prepare(request)
        holder: list[_TakeOver] = []

        async def write(data: bytes) -> None:
            if transport.is_closing():
                raise ConnectionResetError("the connection is closed")
            transport.write(data)
            await holder[0].writable.wait()

        session = SpdySession(write)
        take = _TakeOver(session, transport.get_protocol())
        holder.append(take)
        transport.set_protocol(take)

        async def closer() -> None:
            return None  # aiohttp closes the transport after the handler (force_close)

        return cls(response, session, closer)

    @classmethod
    async def websocket(cls, request: web.Request, protocol: str) -> _Upgrade:
        ws = web.WebSocketResponse(protocols=(protocol,), autoping=True, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)

        async def write(data: bytes) -> None:
            await ws.send_bytes(data)

        session = SpdySession(write)

        async def read() -> None:
            try:
                async for message in ws:
                    if message.type == WSMsgType.BINARY:
                        session.feed(message.data)
                    elif message.type != WSMsgType.TEXT:
                        break
            finally:
                session.feed_eof()

        reader = asyncio.ensure_future(read())

        async def closer() -> None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

        return cls(ws, session, closer)


# --- exec / attach: the client end of one session ----------------------------------------------------


class _Remote:
    """What an exec or attach session needs from the client, whichever transport carries it."""

    gone: asyncio.Event
    resizes: asyncio.Queue[tuple[int, int]]  # (width, height) of the client's terminal

    async def read_stdin(self) -> bytes:  # b"" once the client closed stdin
        raise NotImplementedError

    async def write(self, channel: int, data: bytes) -> None:
        raise NotImplementedError

    async def finish(self, status: Obj) -> None:
        """Send the final Status and end the session."""
        raise NotImplementedError

    async def close(self) -> None:
        """End the session without a Status (the client left); idempotent."""
        raise NotImplementedError


class _WsRemote(_Remote):
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.gone = asyncio.Event()
        self.resizes = asyncio.Queue()
        self._stdin: asyncio.Queue[bytes] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type != WSMsgType.BINARY or not message.data:
                    continue
                channel, payload = message.data[0], message.data[1:]
                if channel == _STDIN and payload:
                    self._stdin.put_nowait(payload)
                elif channel == _CLOSE and payload[:1] == bytes([_STDIN]):
                    self._stdin.put_nowait(b"")
                elif channel == _RESIZE:
                    _sizes(payload, self.resizes)
        finally:
            self.gone.set()
            self._stdin.put_nowait(b"")

    async def read_stdin(self) -> bytes:
        return await self._stdin.get()

    async def write(self, channel: int, data: bytes) -> None:
        for start in range(0, len(data), _CHUNK):
            if self.ws.closed:
                return
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_bytes(bytes([channel]) + data[start : start + _CHUNK])

    async def finish(self, status: Obj) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            if not self.ws.closed:
                await self.ws.send_bytes(bytes([_ERROR]) + json.dumps(status).encode())
        await self.close()

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class _SpdyRemote(_Remote):
    def __init__(self, upgrade: _Upgrade, streams: dict[int, SpdyStream]) -> None:
        self.upgrade = upgrade
        self.streams = streams
        self.gone = upgrade.session.closed
        self.resizes = asyncio.Queue()
        resize = streams.get(_RESIZE)
        self._resizer = asyncio.ensure_future(self._read_resizes(resize)) if resize else None

    async def _read_resizes(self, stream: SpdyStream) -> None:
        buffer = b""
        while chunk := await stream.read():  # JSON objects, one after another
            buffer = _sizes(buffer + chunk, self.resizes)

    @classmethod
    async def gather(cls, upgrade: _Upgrade, wanted: set[int]) -> _SpdyRemote | None:
        """Wait for the streams the client must open (error first, then stdin/stdout/stderr/resize)."""
        streams: dict[int, SpdyStream] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _STREAM_WAIT
        while not wanted <= set(streams):
            try:
                stream = await asyncio.wait_for(upgrade.session.accept(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return None
            if stream is None:
                return None
            kind = _STREAM_TYPES.get(stream.headers.get("streamtype", ""))
            if kind is not None:
                streams[kind] = stream
        return cls(upgrade, streams)

    async def read_stdin(self) -> bytes:
        stream = self.streams.get(_STDIN)
        return b"" if stream is None else await stream.read()

    async def write(self, channel: int, data: bytes) -> None:
        stream = self.streams.get(channel)
        if stream is not None:
            await stream.write(data)

    async def finish(self, status: Obj) -> None:
        for kind in (_STDOUT, _STDERR, _STDIN, _RESIZE):
            if kind in self.streams:
                self.streams[kind].close()
        error = self.streams[_ERROR]
        await error.write(json.dumps(status).encode())
        error.close()
        # kubectl resets its streams and sends GOAWAY when it has read everything; closing first
        # could lose bytes still in flight
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.upgrade.session.closed.wait(), _STREAM_WAIT)
        await self.close()

    async def close(self) -> None:
        if self._resizer is not None:
            self._resizer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resizer
        await self.upgrade.close()


def _sizes(data: bytes, into: asyncio.Queue[tuple[int, int]]) -> bytes:
    """Parse ``{"Width":W,"Height":H}`` terminal sizes from ``data`` into ``into``; the incomplete rest."""
    decoder = json.JSONDecoder()
    text = data.decode("utf-8", "replace")
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        try:
            size, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return text[pos:].encode()
        if isinstance(size, dict):
            into.put_nowait((int(size.get("Width") or 0), int(size.get("Height") or 0)))


# --- pods ------------------------------------------------------------------------------------------


@dataclass
class _Main:
    """A pod's long-running process and the attach sessions that watch its output."""

    argv: tuple[str, ...]
    stdin_once: bool
    proc: asyncio.subprocess.Process | None = None
    watchers: set[asyncio.Queue[tuple[int, bytes] | None]] = field(default_factory=set)
    tasks: list[asyncio.Future[Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Pod:
    """A test's handle on one pod: its directory, container port map and long-running process."""

    namespace: str
    name: str
    directory: Path
    ports: dict[int, int] = field(default_factory=dict)  # container port -> 127.0.0.1 port
    main: _Main | None = None


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("true", "1")


class PodRuntime:
    """Pods as directories and processes on this machine, behind the exec/attach/portforward handlers."""

    def __init__(self, api: KubeAPI) -> None:
        self.api = api
        self.root = api.directory / "pods"
        self._pods: dict[tuple[str, str], Pod] = {}
        self._lock = threading.Lock()
        self._sessions: set[asyncio.Future[Any]] = set()
        api.register_subresource("pods", "exec", self._exec, verbs=("create", "get"), kind="PodExecOptions")
        api.register_subresource(
            "pods", "attach", self._attach, verbs=("create", "get"), kind="PodAttachOptions"
        )
        api.register_subresource(
            "pods", "portforward", self._portforward, verbs=("create", "get"), kind="PodPortForwardOptions"
        )

    # --- the test's side (any thread) -----------------------------------------------------------

    def pod(self, namespace: str, name: str) -> Pod:
        """The runtime entry of a pod (made on first use: any Pod object can be exec'd into)."""
        with self._lock:
            found = self._pods.get((namespace, name))
            if found is None:
                directory = self.root / namespace / name
                directory.mkdir(parents=True, exist_ok=True)
                found = self._pods[(namespace, name)] = Pod(namespace, name, directory)
            return found

    def run(
        self,
        namespace: str,
        name: str,
        *,
        containers: Sequence[str] = ("main",),
        command: Sequence[str] | None = None,
        stdin_once: bool = False,
        ports: Mapping[int, int] | None = None,
    ) -> Pod:
        """Create a Running pod (object, directory, and ``command`` as its attachable process) and map
        its container ports to 127.0.0.1 ports (``{container_port: local_port}``)."""
        rtype = self.api.store.type_of("", "v1", "pods")
        spec_containers = [
            {
                "name": c,
                "image": "kubeshield.test/standin:1",
                "stdin": True,
                "stdinOnce": stdin_once,
                "ports": [{"containerPort": p, "protocol": "TCP"} for p in sorted(ports or {})],
            }
            for c in containers
        ]
        self.api.store.create(
            rtype, namespace, {"metadata": {"name": name}, "spec": {"containers": spec_containers}}
        )
        current = self.api.store.get(rtype, namespace, name)
        current["status"] = {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {
                    "name": c,
                    "ready": True,
                    "restartCount": 0,
                    "image": "kubeshield.test/standin:1",
                    "imageID": "",
                    "started": True,
                    "state": {"running": {"startedAt": current["metadata"]["creationTimestamp"]}},
                }
                for c in containers
            ],
        }
        self.api.store.update(rtype, namespace, name, current, subresource="status")
        pod = self.pod(namespace, name)
        pod.ports.update(ports or {})
        if command:
            pod.main = _Main(tuple(command), stdin_once)
            self._call(self._start_main(pod))
        return pod

    def delete(self, namespace: str, name: str) -> None:
        """Stop the pod's process and remove its object (a missing one is fine)."""
        with self._lock:
            pod = self._pods.pop((namespace, name), None)
        if pod is not None and pod.main is not None:
            self._call(self._stop_main(pod.main))
        with contextlib.suppress(ApiStatus):
            self.api.store.delete(self.api.store.type_of("", "v1", "pods"), namespace, name)

    def _call(self, coro: Awaitable[Any]) -> Any:
        loop = self.api._loop
        if loop is None:
            raise RuntimeError("the stand-in is not running")
        return asyncio.run_coroutine_threadsafe(_as_coroutine(coro), loop).result(60)

    async def aclose(self) -> None:
        """On the stand-in's loop at stop(): end every session and process."""
        for task in list(self._sessions):
            task.cancel()
        for task in list(self._sessions):
            with contextlib.suppress(BaseException):
                await task
        with self._lock:
            pods = list(self._pods.values())
            self._pods.clear()
        for pod in pods:
            if pod.main is not None:
                await self._stop_main(pod.main)

    # --- processes -----------------------------------------------------------------------------------

    def _env(self, pod: Pod) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(pod.directory),
            "HOSTNAME": pod.name,
            "LANG": "C.UTF-8",
        }

    async def _start_main(self, pod: Pod) -> None:
        main = pod.main
        assert main is not None
        main.proc = await asyncio.create_subprocess_exec(
            *main.argv,
            cwd=pod.directory,
            env=self._env(pod),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )

        async def pump(reader: asyncio.StreamReader | None, channel: int) -> None:
            while reader is not None and (chunk := await reader.read(_CHUNK)):
                for watcher in list(main.watchers):
                    watcher.put_nowait((channel, chunk))

        async def watch() -> None:
            assert main.proc is not None
            await asyncio.gather(pump(main.proc.stdout, _STDOUT), pump(main.proc.stderr, _STDERR))
            await main.proc.wait()
            main.done.set()
            for watcher in list(main.watchers):
                watcher.put_nowait(None)

        main.tasks.append(asyncio.ensure_future(watch()))

    async def _stop_main(self, main: _Main) -> None:
        proc = main.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        for task in main.tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()

    # --- handlers --------------------------------------------------------------------------------

    def _target(self, ctx: SubresourceContext, sub: str) -> Obj:
        attrs = Attributes(
            ctx.user.name, ctx.user.groups, "create", "", "pods", sub, ctx.namespace or "", ctx.name
        )
        decision = self.api.authorize(attrs)  # the apiserver asks `create` for these, whatever the method
        if not decision.allowed:
            raise forbidden_status(dataclasses.replace(attrs, resource=f"pods/{sub}"), "")
        return self.api.store.get(ctx.rtype, ctx.namespace, ctx.name)

    def _container(self, request: web.Request, obj: Obj) -> str:
        containers = [c.get("name", "") for c in (obj.get("spec") or {}).get("containers") or []]
        wanted = request.query.get("container") or (containers[0] if len(containers) == 1 else "")
        if not wanted:
            raise bad_request(
                f"a container name must be specified for pod {obj['metadata']['name']}, "
                f"choose one of: {containers}"
            )
        if wanted not in containers:
            raise bad_request(f"container {wanted} is not valid for pod {obj['metadata']['name']}")
        return wanted

    async def _remote(
        self, request: web.Request, wanted: set[int]
    ) -> tuple[web.StreamResponse, _Remote | None]:
        upgrade = request.headers.get("Upgrade", "").lower()
        if upgrade == "websocket":
            if _WS_EXEC not in _offered(request, "Sec-WebSocket-Protocol"):
                return _refuse(
                    400, f"unable to upgrade: the stand-in speaks only {_WS_EXEC} over WebSocket"
                ), None
            ws = web.WebSocketResponse(protocols=(_WS_EXEC,), autoping=True, max_msg_size=16 * 1024 * 1024)
            await ws.prepare(request)
            return ws, _WsRemote(ws)
        if upgrade == "spdy/3.1":
            offered = _offered(request, "X-Stream-Protocol-Version")
            chosen = next((p for p in offered if p in _SPDY_EXEC), None)
            if chosen is None:
                return _refuse(
                    403,
                    f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                    f"server supports {list(_SPDY_EXEC)}",
                ), None
            up = await _Upgrade.spdy(request, chosen)
            remote = await _SpdyRemote.gather(up, wanted)
            if remote is None:
                await up.close()
            return up.response, remote
        raise bad_request("Upgrade request required")

    async def _exec(self, request: web.Request, ctx: SubresourceContext) -> web.StreamResponse:
        obj = self._target(ctx, "exec")
        self._container(request, obj)
        argv = request.query.getall("command", [])
        if not argv:
            raise bad_request("you must specify at least 1 command")
        stdin, stdout, stderr, tty = (_flag(request, n) for n in ("stdin", "stdout", "stderr", "tty"))
        if not (stdin or stdout or stderr):
            raise bad_request("you must specify at least 1 of stdin, stdout, stderr")
        wanted = {_ERROR} | {
            k
            for k, on in ((_STDIN, stdin), (_STDOUT, stdout), (_STDERR, stderr and not tty), (_RESIZE, tty))
            if on
        }
        pod = self.pod(ctx.namespace or "", ctx.name)
        response, remote = await self._remote(request, wanted)
        if remote is not None:
            run = self._run_exec(remote, pod, argv, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)
            await self._session(run, remote.close)
        return response

    async def _session(self, coro: Awaitable[None], close: Callable[[], Awaitable[None]]) -> None:
        """Run one session to its end, then ``close`` its connection, whatever happened; tracked so
        that stop() can end it."""

        async def run() -> None:
            try:
                await coro
            finally:
                await close()

        task = asyncio.ensure_future(run())
        self._sessions.add(task)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:  # the handler was cancelled (client gone): end the session too
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise
        finally:
            self._sessions.discard(task)

    async def _run_exec(
        self,
        remote: _Remote,
        pod: Pod,
        argv: Sequence[str],
        *,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    ) -> None:
        if tty:
            await self._run_tty(remote, pod, argv, stdin=stdin)
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=pod.directory,
                env=self._env(pod),
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE if stderr else asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            reason = (
                "executable file not found in $PATH" if isinstance(exc, FileNotFoundError) else exc.strerror
            )
            await remote.finish(
                _internal(
                    "error executing command in container: OCI runtime exec failed: exec failed: unable to "
                    f'start container process: exec: "{argv[0]}": {reason}: unknown'
                )
            )
            return

        async def pump(reader: asyncio.StreamReader | None, channel: int) -> None:
            while reader is not None and (chunk := await reader.read(_CHUNK)):
                await remote.write(channel, chunk)

        async def feed() -> None:
            writer = proc.stdin
            if writer is None:
                return
            try:
                while data := await remote.read_stdin():
                    writer.write(data)
                    await writer.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                writer.close()

        feeder = asyncio.ensure_future(feed())
        outputs = asyncio.ensure_future(
            asyncio.gather(pump(proc.stdout, _STDOUT), pump(proc.stderr, _STDERR))
        )
        gone = asyncio.ensure_future(remote.gone.wait())
        try:
            waiting: set[asyncio.Future[Any]] = {outputs, gone}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not outputs.done():  # the client left: end the command as the kubelet would
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
                return
            code = await proc.wait()
            await remote.finish(
                _success() if code == 0 else _exit_status(argv, code if code > 0 else 128 - code)
            )
        finally:
            for task in (feeder, outputs, gone):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()

    async def _run_tty(self, remote: _Remote, pod: Pod, argv: Sequence[str], *, stdin: bool) -> None:
        """``exec -t``: the command on a pseudo-terminal of its own (its controlling terminal, through
        util-linux ``setsid -c``), stdout and stderr merged as a terminal merges them, the client's
        terminal size applied with TIOCSWINSZ whenever it sends one."""
        loop = asyncio.get_running_loop()
        master, slave = pty.openpty()
        setsid = shutil.which("setsid")
        command = [setsid, "-c", *argv] if setsid else list(argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                cwd=pod.directory,
                env={**self._env(pod), "TERM": "xterm"},
                stdin=slave,
                stdout=slave,
                stderr=slave,
            )
        except OSError as exc:
            os.close(master)
            await remote.finish(
                _internal(f'error executing command in container: exec: "{argv[0]}": {exc.strerror}')
            )
            return
        finally:
            os.close(slave)
        reader = asyncio.StreamReader()
        read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(master), "rb", buffering=0)
        )
        write_transport, write_protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(os.dup(master), "wb", buffering=0)
        )
        writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)

        async def output() -> None:
            with contextlib.suppress(OSError):  # EIO once the terminal's last holder exited
                while chunk := await reader.read(_CHUNK):
                    await remote.write(_STDOUT, chunk)

        async def feed() -> None:
            with contextlib.suppress(OSError):
                while stdin and (data := await remote.read_stdin()):
                    writer.write(data)
                    await writer.drain()

        async def resize() -> None:
            while True:
                width, height = await remote.resizes.get()
                with contextlib.suppress(OSError):
                    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

        helpers = [asyncio.ensure_future(feed()), asyncio.ensure_future(resize())]
        out = asyncio.ensure_future(output())
        gone = asyncio.ensure_future(remote.gone.wait())
        try:
            waiting: set[asyncio.Future[Any]] = {out, gone}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if out.done():
                code = await proc.wait()
                await remote.finish(
                    _success() if code == 0 else _exit_status(argv, code if code > 0 else 128 - code)
                )
        finally:
            for task in (*helpers, out, gone):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            if proc.returncode is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # setsid made it a session (and group) leader
                except ProcessLookupError:
                    proc.kill()
                await proc.wait()
            writer.close()
            read_transport.close()
            os.close(master)

    async def _attach(self, request: web.Request, ctx: SubresourceContext) -> web.StreamResponse:
        obj = self._target(ctx, "attach")
        self._container(request, obj)
        pod = self.pod(ctx.namespace or "", ctx.name)
        main = pod.main
        if main is None or main.proc is None or main.done.is_set():
            raise ApiStatus(
                400,
                "BadRequest",
                f"container of pod {ctx.name} is not running (the stand-in runs a pod's process "
                "only when the test gives it one: pods.run(command=...))",
            )
        stdin, stdout, stderr, tty = (_flag(request, n) for n in ("stdin", "stdout", "stderr", "tty"))
        wanted = {_ERROR} | {
            k for k, on in ((_STDIN, stdin), (_STDOUT, stdout), (_STDERR, stderr and not tty)) if on
        }
        response, remote = await self._remote(request, wanted)
        if remote is not None:
            run = self._run_attach(remote, main, stdin=stdin, stdout=stdout, stderr=stderr)
            await self._session(run, remote.close)
        return response

    async def _run_attach(
        self, remote: _Remote, main: _Main, *, stdin: bool, stdout: bool, stderr: bool
    ) -> None:
        proc = main.proc
        assert proc is not None
        queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        main.watchers.add(queue)
        if main.done.is_set():
            queue.put_nowait(None)

        async def output() -> None:
            while (item := await queue.get()) is not None:
                channel, data = item
                if (channel == _STDOUT and stdout) or (channel == _STDERR and stderr):
                    await remote.write(channel, data)

        async def feed() -> None:
            writer = proc.stdin
            if writer is None or not stdin:
                return
            try:
                while data := await remote.read_stdin():
                    writer.write(data)
                    await writer.drain()
                if main.stdin_once:  # the kubelet closes a stdinOnce container's stdin after the first attach
                    writer.close()
            except (BrokenPipeError, ConnectionResetError):
                pass

        out = asyncio.ensure_future(output())
        feeder = asyncio.ensure_future(feed())
        gone = asyncio.ensure_future(remote.gone.wait())
        try:
            await asyncio.wait({out, gone}, return_when=asyncio.FIRST_COMPLETED)
            if out.done():
                await remote.finish(_success())
        finally:
            main.watchers.discard(queue)
            for task in (out, feeder, gone):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _portforward(self, request: web.Request, ctx: SubresourceContext) -> web.StreamResponse:
        obj = self._target(ctx, "portforward")
        pod = self.pod(ctx.namespace or "", ctx.name)
        upgrade = request.headers.get("Upgrade", "").lower()
        if upgrade == "websocket":
            if _WS_TUNNEL not in _offered(request, "Sec-WebSocket-Protocol"):
                return _refuse(400, f"unable to upgrade: the stand-in tunnels only {_WS_TUNNEL}")
            up = await _Upgrade.websocket(request, _WS_TUNNEL)
        elif upgrade == "spdy/3.1":
            offered = _offered(request, "X-Stream-Protocol-Version")
            if _PORTFORWARD not in offered:
                return _refuse(
                    403,
                    f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                    f"server supports [{_PORTFORWARD}]",
                )
            up = await _Upgrade.spdy(request, _PORTFORWARD)
        else:
            raise bad_request("Upgrade request required")
        await self._session(self._run_portforward(up, pod, obj["metadata"].get("uid", "")), up.close)
        return up.response

    async def _run_portforward(self, up: _Upgrade, pod: Pod, uid: str) -> None:
        pairs: dict[str, dict[str, SpdyStream]] = {}
        forwards: set[asyncio.Future[None]] = set()
        try:
            while (stream := await up.session.accept()) is not None:
                kind = stream.headers.get("streamtype", "")
                request_id = stream.headers.get("requestid", "")
                if kind not in ("error", "data"):
                    stream.session.send(_spdy.RstStream(stream.id, 1))
                    continue
                pair = pairs.setdefault(request_id, {})
                pair[kind] = stream
                if len(pair) == 2:
                    del pairs[request_id]
                    task = asyncio.ensure_future(self._forward(pod, uid, pair["error"], pair["data"]))
                    forwards.add(task)
                    task.add_done_callback(forwards.discard)
        finally:
            for forward in list(forwards):
                forward.cancel()
                with contextlib.suppress(BaseException):
                    await forward

    async def _forward(self, pod: Pod, uid: str, error: SpdyStream, data: SpdyStream) -> None:
        text = data.headers.get("port", "")
        try:
            port = int(text)
            target = pod.ports[port]
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", target), 30)
        except (ValueError, KeyError, OSError, TimeoutError) as exc:
            why = (
                "no such port on the stand-in's pod"
                if isinstance(exc, (ValueError, KeyError))
                else f"dial tcp4 127.0.0.1: {exc}"
            )
            await error.write(f"error forwarding port {text} to pod {pod.name}, uid {uid}: {why}".encode())
            error.close()
            data.close()
            return

        async def up() -> None:
            while chunk := await data.read():
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()

        async def down() -> None:
            while chunk := await reader.read(_CHUNK):
                await data.write(chunk)
            data.close()

        upward = asyncio.ensure_future(up())
        try:
            await down()
        except (ConnectionError, OSError):
            pass
        finally:
            error.close()
            upward.cancel()
            with contextlib.suppress(BaseException):
                await upward
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
