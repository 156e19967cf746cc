"""A real OpenID provider for tests (npm ``oidc-provider``, panva's certified implementation) and a
"person" who logs in through it with httpx, the way someone in a browser would.

    provider = start_provider(tmp_path, users={"alice": {"groups": ["dev"]}})
    provider.issuer, provider.client_id                  # http://127.0.0.1:PORT, "kubeshield"
    complete_device_login(provider, verification_uri, user_code, login="alice")
    complete_browser_login(authorization_url, login="alice")   # follows redirects to the loopback
    provider.stop()

``make tools`` installs the pinned package (tests/support/oidc/package-lock.json) into
``.venv/tools/oidc``; the script is tests/support/oidc/provider.mjs. The provider's dev interactions
accept any login and password: ``login`` becomes the account id (``sub``), its claims come from
``users`` (``email`` defaults to ``<login>@example.test``, ``groups`` to none).

Import the fixture explicitly: ``from tests.support.oidc_provider import oidc_provider  # noqa: F401``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

__all__ = [
    "OidcProvider",
    "complete_browser_login",
    "complete_device_login",
    "oidc_modules",
    "oidc_provider",
    "start_provider",
]

_SCRIPT = Path(__file__).parent / "oidc" / "provider.mjs"
_MODULES = Path(sys.prefix) / "tools" / "oidc" / "node_modules"
_START_TIMEOUT = 60.0
_HTTP_TIMEOUT = 30.0


def oidc_modules() -> Path:
    """The node_modules folder holding oidc-provider; a missing one fails loudly with the fix."""
    path = Path(os.environ.get("KUBESHIELD_OIDC_MODULES", _MODULES))
    if not (path / "oidc-provider" / "lib" / "index.js").is_file():
        pytest.fail(f"oidc-provider not found under {path}: run `make tools` (npm ci into .venv/tools/oidc)")
    if shutil.which("node") is None:
        pytest.fail("node is not installed (the OpenID provider runs on node 20+)")
    return path


@dataclass
class OidcProvider:
    issuer: str
    client_id: str
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path

    def discovery(self) -> dict[str, Any]:
        with httpx.Client(timeout=_HTTP_TIMEOUT) as client:
            doc = client.get(f"{self.issuer}/.well-known/openid-configuration").raise_for_status().json()
        assert isinstance(doc, dict)
        return doc

    def jwks(self) -> dict[str, Any]:
        with httpx.Client(timeout=_HTTP_TIMEOUT) as client:
            doc = client.get(self.discovery()["jwks_uri"]).raise_for_status().json()
        assert isinstance(doc, dict)
        return doc

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(30)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_provider(
    directory: Path,
    *,
    client_id: str = "kubeshield",
    users: Mapping[str, Mapping[str, Any]] | None = None,
    id_token_ttl: int | None = None,
    id_token_alg: str = "RS256",
) -> OidcProvider:
    """Start the provider on a port the OS picks and wait until discovery answers."""
    modules = oidc_modules()
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "oidc-config.json"
    doc: dict[str, Any] = {"clientId": client_id, "users": dict(users or {}), "idTokenAlg": id_token_alg}
    if id_token_ttl is not None:
        doc["idTokenTtl"] = id_token_ttl
    config.write_text(json.dumps(doc))
    log_path = directory / "oidc-provider.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["node", str(_SCRIPT), str(config)],
            env={**os.environ, "KUBESHIELD_OIDC_MODULES": str(modules)},
            stdout=subprocess.PIPE,
            stderr=log,
        )
    assert process.stdout is not None
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(_START_TIMEOUT)
    line = lines[0].decode().strip() if lines else ""
    if not line.startswith("ready "):
        process.kill()
        process.wait(30)
        process.stdout.close()
        raise RuntimeError(f"the OpenID provider did not start: {log_path.read_text()[-2000:]}")
    provider = OidcProvider(
        issuer=line.split(" ", 1)[1], client_id=client_id, process=process, log_path=log_path
    )
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        try:
            provider.discovery()
            return provider
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                provider.stop()
                raise
            time.sleep(0.1)


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """One provider for the session, users alice (groups dev, ops) and bob (no groups)."""
    provider = start_provider(
        tmp_path_factory.mktemp("oidc"),
        users={"alice": {"groups": ["dev", "ops"]}, "bob": {}},
    )
    try:
        yield provider
    finally:
        provider.stop()


# --- the person ------------------------------------------------------------------------------------


@dataclass
class _Form:
    action: str
    method: str
    form_id: str | None
    fields: dict[str, str] = field(default_factory=dict)


class _Forms(HTMLParser):
    """Every <form> of a page and its inputs (inputs outside a form count when form="<id>" names it)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self._current: _Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._current = _Form(a.get("action", ""), a.get("method", "get").lower(), a.get("id"))
            self.forms.append(self._current)
        elif tag == "input" and a.get("name"):
            target = self._current
            if "form" in a:
                target = next((f for f in self.forms if f.form_id == a["form"]), target)
            if target is not None:
                target.fields[a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def _forms(html: str) -> list[_Form]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def _submit_page(
    client: httpx.Client, page: httpx.Response, *, login: str, user_code: str | None
) -> httpx.Response | None:
    """Fill and submit the one form of ``page`` that a person would (None: no form left)."""
    forms = [f for f in _forms(page.text) if f.method == "post"]
    if not forms:
        return None
    form = forms[0]
    values = dict(form.fields)
    if "user_code" in values:
        assert user_code is not None, "the provider asks for a user code"
        values["user_code"] = user_code
    if "login" in values or values.get("prompt") == "login":
        values["login"] = login
        values["password"] = "any password: devInteractions accepts it"
    values.pop("abort", None)
    return client.post(urljoin(str(page.url), form.action), data=values)


def complete_device_login(
    provider: OidcProvider,
    verification_uri: str,
    user_code: str,
    *,
    login: str = "alice",
    max_steps: int = 10,
) -> str:
    """Open the verification page, type the code, sign in, consent. Returns the last page's text."""
    assert verification_uri.startswith(provider.issuer), "the verification URL is the provider's"
    with httpx.Client(follow_redirects=True, timeout=_HTTP_TIMEOUT) as client:
        page = client.get(verification_uri)
        for _ in range(max_steps):
            page.raise_for_status()
            nxt = _submit_page(client, page, login=login, user_code=user_code)
            if nxt is None:
                return page.text
            page = nxt
    raise AssertionError(f"the device login did not finish in {max_steps} steps")


def complete_browser_login(
    authorization_url: str,
    *,
    login: str = "alice",
    max_steps: int = 20,
    callback_hosts: Sequence[str] = ("127.0.0.1",),
) -> httpx.Response:
    """Open the authorization URL, sign in, consent, and follow the redirect to the loopback callback
    (the login's listener receives it). Returns the callback's response."""
    issuer = urlsplit(authorization_url).netloc
    with httpx.Client(follow_redirects=False, timeout=_HTTP_TIMEOUT) as client:
        response = client.get(authorization_url)
        for _ in range(max_steps):
            if response.is_redirect:
                target = urljoin(str(response.url), response.headers["location"])
                parts = urlsplit(target)
                if parts.netloc != issuer and parts.hostname in callback_hosts:
                    return client.get(target)
                response = client.get(target)
                continue
            response.raise_for_status()
            nxt = _submit_page(client, response, login=login, user_code=None)
            if nxt is None:
                raise AssertionError("the provider showed a page without a form and no redirect")
            response = nxt
    raise AssertionError(f"the browser login did not reach the callback in {max_steps} steps")
