"""fetch() over HTTPS, with certificates from a throwaway certificate authority."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from pytest_httpserver import HTTPServer
from raw_http import running_trickle_server

from bts_sync.config import Endpoint
from bts_sync.fetch import fetch

# verify_tls = false is what these tests are about.
pytestmark = pytest.mark.filterwarnings(
    "ignore::urllib3.exceptions.InsecureRequestWarning"
)


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    """Return a certificate authority that no system trusts."""
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(authority: trustme.CA) -> ssl.SSLContext:
    """Return a server TLS context with a certificate for 127.0.0.1."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def https_server(server_context: ssl.SSLContext) -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=server_context)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def https(https_server: HTTPServer) -> Iterator[HTTPServer]:
    https_server.expect_request("/items").respond_with_json({"secure": True})
    yield https_server
    https_server.clear()


def make_endpoint(url: str, verify_tls: bool) -> Endpoint:
    return Endpoint(
        name="secure",
        url=url,
        verify_tls=verify_tls,
        connect_timeout_s=1.0,
        read_timeout_s=1.0,
        deadline_s=2.0,
    )


def test_untrusted_certificate_fails_as_tls(https: HTTPServer) -> None:
    result = fetch(make_endpoint(https.url_for("/items"), verify_tls=True))

    assert result.error_kind == "tls"
    assert result.error is not None
    assert "certificate verify failed" in result.error


def test_unverified_certificate_is_accepted(https: HTTPServer) -> None:
    result = fetch(make_endpoint(https.url_for("/items"), verify_tls=False))

    assert result.ok
    assert result.body == {"secure": True}


def test_trusted_certificate_is_accepted(
    https: HTTPServer,
    authority: trustme.CA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the authority in the file that OpenSSL reads as its trust store
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))

    # When the endpoint is polled with verification on
    result = fetch(make_endpoint(https.url_for("/items"), verify_tls=True))

    # Then the certificate is accepted
    assert result.ok
    assert result.body == {"secure": True}


def test_trickled_tls_headers_stop_at_deadline(
    server_context: ssl.SSLContext,
) -> None:
    with running_trickle_server(ssl_context=server_context) as server:
        endpoint = Endpoint(
            name="secure",
            url=server.url("/trickle-headers"),
            verify_tls=False,
            deadline_s=0.5,
        )

        started = time.monotonic()
        result = fetch(endpoint)
        elapsed = time.monotonic() - started

    assert result.error_kind == "timeout"
    assert elapsed < 1.5
