"""Credential masking for anything that prints, logs or records a URL.

RTSP cameras are addressed as ``rtsp://user:password@host/path``, and many also take credentials in
the query string (``?token=...``, ``&password=...``, ``&pwd=...``); neither may reach a log line, a
metric label, an event row or ``amodal check`` output. Use :func:`mask_url` on every URL before it
leaves the component that holds it, and :func:`mask_urls_in` on free text that may quote one.
"""

from __future__ import annotations

import re

__all__ = ["mask_url", "mask_urls_in"]

# scheme://userinfo@ where userinfo has no '/', '@' or whitespace.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*)(?::(?P<pw>[^/\s]*))?@")
# a URL inside free text: up to whitespace or a quote / bracket that ends it in prose and logs
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
# query parameters whose name says they carry a secret (token, access_token, password, passwd, pwd,
# pass, secret, key, apikey, api_key, auth, authorization, signature, sig, credential, session)
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;][A-Za-z0-9_.\-]*?"
    r"(?:token|password|passwd|pwd|pass|secret|key|auth|signature|sig|credential|session)"
    r"[A-Za-z0-9_.\-]*=)(?P<value>[^&;#\s]*)",
    re.IGNORECASE,
)


def mask_url(url: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://user:***@host/x``; a user with no password keeps its name.

    Secret-looking query parameters are masked too: ``?token=abc&ch=1`` -> ``?token=***&ch=1``.
    Strings without credentials (file paths, ``tcp://host:port``) come back unchanged.
    """
    text = _USERINFO.sub(_replace, str(url), count=1)
    return _mask_query(text) if "://" in text else text


def mask_urls_in(text: str) -> str:
    """Mask every URL with credentials inside free text (error messages from FFmpeg, for example)."""
    return _URL.sub(lambda m: _mask_query(_USERINFO.sub(_replace, m.group(0), count=1)), str(text))


def _mask_query(url: str) -> str:
    head, sep, rest = url.partition("?")
    if not sep:
        return url
    return head + _SECRET_PARAM.sub(lambda m: m.group("name") + "***", sep + rest)


def _replace(match: re.Match[str]) -> str:
    if match.group("pw") is None:
        return f"{match.group('scheme')}{match.group('user')}@"
    return f"{match.group('scheme')}{match.group('user')}:***@"
