"""Who may use the annotation app, and how its responses defend the browser.

- Identity comes only from the authentication dependency the app is built with (never from a form or body field);
  without one, every request is refused (fail closed).
- Only experts on the roster may read or write; anyone else signed in gets 403.
- A write a browser could have sent with its cookies must come from the app's own origin (the ``Origin``, else the
  ``Referer`` header): the session cookie is ``SameSite=Lax``, which still lets a sibling subdomain (same site)
  post with it. Only a bearer-token request carrying no cookie is exempt.
- Every response forbids scripts, frames and plugins from anywhere but the app itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from fastapi import HTTPException, Request, status

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "form-action 'self'",
    "frame-ancestors 'self'",  # the Airflow UI shows the pages in a frame of the same origin
    "base-uri 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "SAMEORIGIN",
    "Cache-Control": "no-store",
}


def refuse_all() -> Callable[[], str]:
    """Return an authentication dependency that refuses every request: the app's stand-in when the real one could
    not be loaded, so a broken import never leaves the routes open."""

    def unavailable() -> str:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            "authentication is unavailable (the auth manager could not be loaded): "
                            "the annotation app refuses every request")

    return unavailable


def origin_of(url: str | None) -> str | None:
    """Return ``scheme://host[:port]`` of ``url``, lower-cased; ``None`` for anything that is not an http(s) URL."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def check_same_origin(request: Request, trusted: Iterable[str] = ()) -> None:
    """Refuse (403) an unsafe request that a browser could have sent with its cookies unless it comes from this app's
    origin: the one the browser addressed (``Host``) or one of ``trusted`` (the public base URL behind a proxy).

    Only a request with a bearer token and no cookie at all is exempt: no browser sends such a request across sites
    (the header needs a CORS preflight this app never grants), and the cookie cannot be what authenticates it.
    """
    if request.method not in UNSAFE_METHODS:
        return
    scheme, _, _ = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and not request.cookies:
        return
    sent = request.headers.get("origin")
    if sent == "null":  # a sandboxed frame, a data: URL, a redirect across sites: never this app's own page
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site request refused: opaque origin")
    source = origin_of(sent) if sent else origin_of(request.headers.get("referer"))
    if source is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a write from the browser must carry an Origin or Referer "
                                                       "header of this site (cross-site request refused)")
    own = origin_of(f"{request.url.scheme}://{request.headers.get('host', '')}")
    allowed = {own} | {origin_of(t) for t in trusted}
    if source not in allowed - {None}:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"cross-site request refused: origin {source} is not this "
                                                       "site's")
