"""Credential masking for anything that prints, logs or records a URL.

RTSP cameras are addressed as ``rtsp://user:password@host/path``; the password must never reach a
log line, a metric label, an event row or ``amodal check`` output. Use :func:`mask_url` on every URL
before it leaves the component that holds it.
"""

from __future__ import annotations

import re

__all__ = ["mask_url", "mask_urls_in"]

# scheme://userinfo@ where userinfo has no '/', '@' or whitespace.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*)(?::(?P<pw>[^/\s]*))?@")


def mask_url(url: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://user:***@host/x``; a user with no password keeps its name.

    Strings without credentials (file paths, ``tcp://host:port``) come back unchanged.
    """
    return _USERINFO.sub(_replace, str(url), count=1)


def mask_urls_in(text: str) -> str:
    """Mask every URL with credentials inside free text (error messages from FFmpeg, for example)."""
    return _USERINFO.sub(_replace, str(text))


def _replace(match: re.Match[str]) -> str:
    if match.group("pw") is None:
        return f"{match.group('scheme')}{match.group('user')}@"
    return f"{match.group('scheme')}{match.group('user')}:***@"
