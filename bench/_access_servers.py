"""The two servers of bench/access_bench.py, each in a process of its own (no shared GIL):

    python bench/_access_servers.py standin DIR     # the Kubernetes API stand-in, seeded
    python bench/_access_servers.py proxy SPEC.json # a LocalProxy to it (SPEC: url, ca, cert, key)

Each prints one JSON line saying where it is, then serves until its stdin closes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WATCH_EVENTS = 10_000
LIST_OBJECTS = 1_000


def standin(directory: Path) -> None:
    from tests.support.kubeapi._server import KubeAPI

    api = KubeAPI(directory, bookmark_interval=None).start()
    store = api.store
    namespaces = store.type_of("", "v1", "namespaces")
    configmaps = store.type_of("", "v1", "configmaps")
    for ns in ("small", "list", "watch"):
        store.create(namespaces, None, {"metadata": {"name": ns}})
    store.create(configmaps, "small", {"metadata": {"name": "one"}, "data": {"k": "v" * 64}})
    for i in range(LIST_OBJECTS):
        store.create(
            configmaps,
            "list",
            {"metadata": {"name": f"cm-{i:04d}", "labels": {"app": "bench"}}, "data": {"k": "v" * 64}},
        )
    # a watch without a resourceVersion starts with every object as an ADDED event: 10,000 of them
    for i in range(WATCH_EVENTS):
        store.create(configmaps, "watch", {"metadata": {"name": f"w-{i:05d}"}, "data": {"k": "v" * 64}})
    user = api.mint_client_cert("bench", ("system:masters",))
    print(
        json.dumps({"url": api.url, "ca": str(api.ca_path), "cert": str(user.cert), "key": str(user.key)}),
        flush=True,
    )
    sys.stdin.read()
    api.stop()


def proxy(spec_path: Path) -> None:
    from kubeshield.access.credential import ClusterCredential
    from kubeshield.access.proxy import LocalProxy
    from tests.support.access_proxy import ServingPKI, new_bearer

    spec = json.loads(spec_path.read_text())
    cred = ClusterCredential(
        context="bench",
        server=spec["url"],
        ca_pem=Path(spec["ca"]).read_bytes(),
        client_cert_pem=Path(spec["cert"]).read_bytes(),
        client_key_pem=Path(spec["key"]).read_bytes(),
        subject="bench",
    )
    pki = ServingPKI.make()
    bearer = new_bearer()

    async def main() -> None:
        server = LocalProxy(
            credential=lambda: cred, bearer=bearer, serving_cert_pem=pki.cert_pem, serving_key_pem=pki.key_pem
        )
        await server.start()
        print(
            json.dumps(
                {
                    "url": server.url,
                    "ca_pem": base64.b64encode(pki.ca_pem).decode(),
                    "bearer": bearer.decode(),
                }
            ),
            flush=True,
        )
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop()

    asyncio.run(main())


if __name__ == "__main__":
    mode, arg = sys.argv[1], Path(sys.argv[2])
    standin(arg) if mode == "standin" else proxy(arg)
