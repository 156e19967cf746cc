"""The kubeconfig that ``kubeshield access kubeconfig`` prints: it points kubectl at the local proxy and
holds no secret at all.

* ``server``: the proxy's ``https://127.0.0.1:PORT`` (kubectl sends no credential to an ``http://``
  server, so the proxy is https);
* ``certificate-authority-data``: the agent's local CA certificate (public; see ``local_ca``);
* ``user``: an ``exec`` entry (``client.authentication.k8s.io/v1``) that runs ``kubeshield access
  exec-credential --context NAME --proxy --listen 127.0.0.1:PORT``, which asks the agent for the proxy
  session's bearer secret each time kubectl needs it (and starts the proxy again on the same port if
  it was stopped by a lock). ``interactiveMode: IfAvailable``: a locked agent can ask for the
  passphrase when kubectl runs in a terminal. ``provideClusterInfo: true`` hands the plugin the CA this
  kubeconfig trusts, so that after an agent restart (a new local CA) the plugin says to print the
  kubeconfig again instead of kubectl failing with an x509 error.

Nothing in it is worth stealing: the bearer secret lives only in the agent and in kubectl's memory.
"""

from __future__ import annotations

import base64
from typing import Any

import yaml

__all__ = ["EXEC_API_VERSION", "render_kubeconfig"]

EXEC_API_VERSION = "client.authentication.k8s.io/v1"


def render_kubeconfig(
    *,
    context: str,
    proxy_url: str,
    ca_pem: bytes,
    command: str,
    namespace: str | None = None,
    socket_path: str | None = None,
) -> str:
    """YAML text of the secret-free kubeconfig for ``context`` (names in it are ``context``'s)."""
    if not proxy_url.startswith("https://"):
        raise ValueError("the proxy URL must be https://")
    listen = proxy_url.removeprefix("https://").rstrip("/")
    args = ["access", "exec-credential", "--context", context, "--proxy", "--listen", listen]
    if socket_path is not None:
        args += ["--socket", socket_path]
    ctx: dict[str, Any] = {"cluster": context, "user": context}
    if namespace:
        ctx["namespace"] = namespace
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": context,
                "cluster": {
                    "server": proxy_url,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode("ascii"),
                },
            }
        ],
        "users": [
            {
                "name": context,
                "user": {
                    "exec": {
                        "apiVersion": EXEC_API_VERSION,
                        "command": command,
                        "args": args,
                        "interactiveMode": "IfAvailable",
                        # the cluster's CA reaches the plugin: a kubeconfig of an earlier agent is told apart
                        "provideClusterInfo": True,
                        "installHint": "kubeshield is not installed: pip install kubeshield (docs/access.md)",
                    }
                },
            }
        ],
        "contexts": [{"name": context, "context": ctx}],
        "current-context": context,
        "preferences": {},
    }
    return yaml.safe_dump(document, sort_keys=False)
