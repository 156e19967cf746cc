"""A person's whole kubeshield access session, with real processes, for the end-to-end tests.

    with UserSession.begin(api, tmp_path) as s:     # HOME, XDG dirs, TMPDIR of its own; a kubeconfig
        s.import_kubeconfig()                       #   holding a client key and a token, removed
        url = s.start_proxy("standin")              # `kubeshield access proxy` in the foreground
        kc = s.kubeconfig("standin", namespace=ns)  # `kubeshield access kubeconfig` (no secret)
        s.kubectl.run("get", "pods", kubeconfig=kc)  # real kubectl, through the agent's proxy

The user's credentials are made at test time by the stand-in (a client certificate for
``user`` and a static token) and written only into the user's ``~/.kube/config``, as a person
would have them before kubeshield; the stand-in's own copy of the client key is deleted at once, so
afterwards the only plaintext copies are this object's memory (``secrets``) and what the session
leaks, which is what test_no_credential_on_disk looks for.
"""

from __future__ import annotations

import base64
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import yaml

from tests.support.access_agent import KUBESHIELD, AgentProcess, start_agent_process
from tests.support.access_kubectl import DEADLINE, Lines, stop
from tests.support.kubeapi import KubeAPI
from tests.support.kubeapi.fixtures import Kubectl, kubectl_binary

__all__ = ["UserSession"]

PASSPHRASE_ENV = "KUBESHIELD_ACCESS_PASSPHRASE"


@dataclass
class UserSession:
    api: KubeAPI
    root: Path
    user: str
    home: Path
    runtime: Path
    data: Path
    tmp: Path
    socket: Path
    env: dict[str, str]
    kubectl: Kubectl
    secrets: dict[str, bytes] = field(default_factory=dict)  # what must never reach a disk
    agent: AgentProcess | None = None
    proxies: list[tuple[subprocess.Popen[str], Lines]] = field(default_factory=list)

    @classmethod
    def begin(cls, api: KubeAPI, root: Path, *, user: str | None = None) -> UserSession:
        home, runtime, data, tmp = (root / n for n in ("home", "run", "data", "tmp"))
        for directory in (home, runtime, data, tmp):
            directory.mkdir(parents=True, mode=0o700)
        socket = runtime / "kubeshield" / "agent.sock"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(runtime),
            "XDG_DATA_HOME": str(data),
            "TMPDIR": str(tmp),
            "KUBESHIELD_AGENT_SOCKET": str(socket),
            PASSPHRASE_ENV: "correct horse battery staple " + uuid.uuid4().hex,
        }
        name = user or "carol-" + uuid.uuid4().hex[:6]
        return cls(api, root, name, home, runtime, data, tmp, socket, env, Kubectl(kubectl_binary(), home))

    def __enter__(self) -> UserSession:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end()

    # --- the steps -------------------------------------------------------------------------------

    def write_kubeconfig(self) -> Path:
        """``~/.kube/config`` as the person has it before kubeshield: context ``standin`` with a client
        certificate and key inline, context ``standin-token`` with a static bearer token."""
        credential = self.api.mint_client_cert(self.user, ("devs",), stem=f"client-{self.user}")
        cert, key = credential.cert.read_bytes(), credential.key.read_bytes()
        credential.key.unlink()  # the stand-in does not need it: from now on only the user holds it
        token = self.api.add_token(self.user + "-token", ("devs",))
        self.secrets.update(client_key=key, token=token.encode())
        ca = base64.b64encode(self.api.ca_path.read_bytes()).decode()
        cluster = {"server": self.api.url, "certificate-authority-data": ca}
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": cluster}],
            "users": [
                {
                    "name": "cert",
                    "user": {
                        "client-certificate-data": base64.b64encode(cert).decode(),
                        "client-key-data": base64.b64encode(key).decode(),
                    },
                },
                {"name": "token", "user": {"token": token}},
            ],
            "contexts": [
                {"name": "standin", "context": {"cluster": "standin", "user": "cert"}},
                {"name": "standin-token", "context": {"cluster": "standin", "user": "token"}},
            ],
            "current-context": "standin",
        }
        path = self.home / ".kube" / "config"
        path.parent.mkdir(mode=0o700)
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(doc))
        return path

    def start_agent(self, *args: str) -> AgentProcess:
        """``kubeshield access agent ARGS`` in the session's environment, once it is ready."""
        self.agent = start_agent_process(self.socket, *args, env=self.env)
        return self.agent

    def run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``kubeshield ARGS`` in the session's environment."""
        done = subprocess.run(
            [KUBESHIELD, *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubeshield {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done

    def import_kubeconfig(self) -> subprocess.CompletedProcess[str]:
        config = self.write_kubeconfig()
        return self.run(
            "access", "import", "--kubeconfig", str(config),
            "--context", "standin", "--context", "standin-token", "--remove", "--yes",
        )  # fmt: skip

    def start_proxy(self, context: str) -> str:
        """``kubeshield access proxy --context CONTEXT`` in the foreground (as a person runs it in a
        terminal); its URL. Stopped (SIGTERM, like Ctrl-C) by ``stop_proxies``/``end``."""
        proc = subprocess.Popen(
            [KUBESHIELD, "access", "proxy", "--context", context],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines = Lines(proc.stdout)
        self.proxies.append((proc, lines))
        return lines.until(r"^(https://127\.0\.0\.1:\d+)").group(1)

    def kubeconfig(self, context: str, *, namespace: str | None = None) -> Path:
        args = ["access", "kubeconfig", "--context", context, "--socket", str(self.socket)]
        if namespace:
            args += ["--namespace", namespace]
        path = self.home / ".kube" / f"{context}-via-kubeshield.yaml"
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.write_text(self.run(*args).stdout)
        return path

    def bearer(self, context: str) -> bytes:
        """The proxy session's bearer secret, as kubectl's exec plugin gets it (kept for the scan)."""
        import json

        doc = json.loads(self.run("access", "exec-credential", "--context", context, "--proxy").stdout)
        value = str(doc["status"]["token"]).encode()
        self.secrets[f"bearer-{context}"] = value
        return value

    def stop_proxies(self) -> list[str]:
        errors = [stop(proc, lines) for proc, lines in self.proxies]
        self.proxies.clear()
        return errors

    def end(self) -> None:
        self.stop_proxies()
        if self.agent is not None:
            self.agent.stop()
            self.agent = None
