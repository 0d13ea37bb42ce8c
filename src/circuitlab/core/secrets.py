"""Keeping credentials out of everything circuitlab writes.

A server's error body, a proxy's echo of the request or an exception's text can carry the
API key back to us; failure records, logs and run directories are shared and committed, so
every message that may hold one goes through `redact` before it is stored or printed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "[redacted]"

# credentials in the usual spellings, whatever the key: an Authorization header or a bearer
# token, an api-key header or query parameter, the user:password of a URL
_PATTERNS = (
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)([^'\"\r\n,}]+)"),
    re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/=-]+)"),
    re.compile(r"(?i)((?:x-)?api[-_]?key['\"]?\s*[:=]\s*['\"]?)([^'\"\s&,}]+)"),
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)([^/\s:@]+:[^/\s@]+)(?=@)"),
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every given secret (exact, of 4 characters or more) and every credential
    in a recognisable spelling replaced by a mask."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text
