"""AsyncKubeClient: the same verbs, errors and reviews as the synchronous client, over real HTTPS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kubeshield.errors import KubeConflict, KubeForbidden, KubeNotFound
from kubeshield.kube import AsyncKubeClient, PatchType, resources
from tests.support.kubeapi import KubeAPI


def test_async_verbs(kube_api: KubeAPI, kube_ns: str, tmp_path: Path):
    config = kube_api.kubeconfig(tmp_path / "kc", credential=kube_api.admin, namespace=kube_ns)
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    async def scenario() -> None:
        async with AsyncKubeClient.from_kubeconfig(config, sleep=sleep) as kube:
            made = await kube.create(
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"n": "0"}}
            )
            assert (await kube.get(resources.CONFIG_MAPS, "a"))["data"] == {"n": "0"}
            await kube.patch(resources.CONFIG_MAPS, "a", {"data": {"m": "1"}})
            with pytest.raises(KubeConflict):
                await kube.replace(made)
            raced = {"left": 1}

            def mutate(obj: dict) -> dict:
                if raced["left"]:
                    raced["left"] -= 1
                    kube_api.store.put({**obj, "data": {"n": "race"}})
                obj["data"]["n"] = "done"
                return obj

            assert (await kube.update(resources.CONFIG_MAPS, "a", mutate))["data"]["n"] == "done"
            assert len(slept) == 1
            applied = await kube.apply(
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}, "data": {"x": "1"}},
                field_manager="async-test",
            )
            assert applied["metadata"]["managedFields"][0]["manager"] == "async-test"
            await kube.patch(
                resources.CONFIG_MAPS, "b", [{"op": "remove", "path": "/data/x"}], patch_type=PatchType.JSON
            )
            names = [o["metadata"]["name"] for o in await kube.list(resources.CONFIG_MAPS, page_size=1)]
            assert names == ["a", "b"]
            await kube.emit_event(applied, reason="Tested", message="async")
            assert len(await kube.list(resources.EVENTS)) == 1
            await kube.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "svc"}})
            token, _ = await kube.create_token("svc", audiences=["kubeshield"], expiration_seconds=600)
            review = await kube.token_review(token, ["kubeshield"])
            assert review.service_account == (kube_ns, "svc")
            assert (await kube.subject_access_review(user="x", verb="get", resource="pods")).allowed
            await kube.delete(resources.CONFIG_MAPS, "a")
            with pytest.raises(KubeNotFound):
                await kube.get(resources.CONFIG_MAPS, "a")

    asyncio.run(scenario())


def test_async_forbidden(kube_api: KubeAPI, kube_ns: str, tmp_path: Path):
    config = kube_api.kubeconfig(tmp_path / "kc", user="trudy", namespace=kube_ns)
    kube_api.deny(user="trudy", verb="create")

    async def scenario() -> None:
        async with AsyncKubeClient.from_kubeconfig(config) as kube:
            with pytest.raises(KubeForbidden):
                await kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "no"}})

    try:
        asyncio.run(scenario())
    finally:
        kube_api.clear_denies()
