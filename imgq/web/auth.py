"""Who may ask, and what every answer carries: API keys, each client's share, the Host check, security headers.

- API keys (API_KEYS, API_KEYS_FILE): every endpoint but the liveness/readiness probes wants
  `Authorization: Bearer <key>`; a missing or wrong key is 401 JSON. Keys are compared in constant time
  (hmac.compare_digest) against each configured key, so the time of a refusal says nothing about the keys.
- A client is its key's id (a hash, never the key) or, without keys, the request's address; its share of
  the queue (imgq/jobs/shares.py) is kept in g.share for the classification endpoints.
- The page and GET /activity answer only to ALLOWED_HOSTS (by default the loopback names while HOST is
  loopback), so a web page elsewhere cannot rebind a DNS name to 127.0.0.1 and read them.
- Every answer says nosniff and may not be framed; the page gets a Content-Security-Policy that allows only
  its own files.
"""
from __future__ import annotations

import hashlib
import hmac

from flask import Flask, Response, g, request

from imgq import settings
from imgq.errors import BadRequest, Unauthorized
from imgq.jobs.shares import ClientShare

# Probes answer without a key: orchestrators and load balancers do not carry one, and they reveal nothing.
OPEN_PATHS = ("/livez", "/readyz", "/v2/health/live", "/v2/health/ready")
BROWSER_PATHS = ("/", "/activity", "/static/")
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def configured_keys() -> list[bytes]:
    """API_KEYS and the lines of API_KEYS_FILE (blank lines and # comments skipped)."""
    found = [k.strip() for k in settings.API_KEYS.split(",") if k.strip()]
    if settings.API_KEYS_FILE:
        with open(settings.API_KEYS_FILE, encoding="utf-8") as f:
            found += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    return [k.encode() for k in found]


def allowed_hosts() -> list[str] | None:
    """Host names the page answers to; None = any."""
    names = [h.strip().lower() for h in settings.ALLOWED_HOSTS.split(",") if h.strip()]
    if "*" in names:
        return None
    if names:
        return names
    return [*settings.LOOPBACK_HOSTS, settings.HOST] if settings.is_loopback(settings.HOST) else None


def _host_name(header: str) -> str:
    """'example.org:5000' → 'example.org'; '[::1]:5000' → '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _key_of(header: str | None) -> bytes | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip().encode() if scheme.lower() == "bearer" and value.strip() else None


def install(app: Flask, prefix: str) -> None:
    keys = configured_keys()
    hosts = allowed_hosts()

    @app.before_request
    def check_client() -> None:
        path = request.path
        if hosts is not None and (path == "/" or path.startswith(BROWSER_PATHS[1:])):
            if _host_name(request.host) not in hosts:
                raise BadRequest(f"this server does not answer the page to host {request.host[:80]!r} "
                                 "(ALLOWED_HOSTS)", 421)
        client = f"addr:{request.remote_addr or 'unknown'}"
        if keys and path not in OPEN_PATHS:
            given = _key_of(request.headers.get("Authorization"))
            if given is None:
                raise Unauthorized("an API key is needed: send Authorization: Bearer <key>")
            # Every key is compared, whatever matches, so the time taken does not depend on which one did.
            matched = [hmac.compare_digest(given, key) for key in keys]
            if not any(matched):
                raise Unauthorized("that API key is not accepted")
            client = "key:" + hashlib.sha256(given).hexdigest()[:16]
        g.client = client
        g.share = ClientShare(prefix, client)

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        else:
            response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response
