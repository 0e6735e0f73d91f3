"""Secrets kept out of what ctloop prints, logs, raises and posts to Slack.

Three kinds of secret travel inside URLs: credentials (`http://user:password@mlflow:5000`), signed
or token query parameters (`?token=...`, `&sig=...`), and a Slack incoming-webhook URL, whose path
is itself the key. Every message that may quote such a URL goes through `redact_url` (one URL, e.g.
a tracking URI) or `redact_text` (free text, e.g. a library's error message that quotes the URL
it called): the secret part becomes `***` and the rest stays, so the message still names the host.
A URL known to be secret as a whole (the webhook) is passed to `redact_text` as one of `secrets`
and shown as its host only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["MASK", "redact_text", "redact_url"]

MASK = "***"

# scheme://userinfo@ : the greedy userinfo ends at the authority's last "@"
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s'\"<>]*@")
# ?name=value or &name=value (also ;name=, as in an escaped "&amp;name=") with a secret-looking name
_SECRET_PARAMETER = re.compile(
    r"(?i)([?&;](?:[\w.-]*(?:token|secret|passw|signature|credential|api[_-]?key|auth)[\w.-]*|sig|key)=)"
    r"[^&;#\s'\"<>|]*"
)
# a Slack incoming webhook, with or without its scheme: the path is the key
_SLACK_WEBHOOK = re.compile(r"(?i)\b((?:https?://)?hooks\.slack(?:-gov)?\.com)/[^\s'\"<>|]*")


def redact_url(url: str) -> str:
    """`url` with `user:password@` as `***@`, secret query values as `***` and a Slack webhook's
    path as `/***`; a URL without any of them is returned unchanged.

    A URL without a scheme (`user:password@host:5000/path`) is read as starting with its host.
    """
    if "://" not in url:
        authority, rest = _split_authority(url)
        if "@" in authority:
            url = f"{MASK}@{authority.rpartition('@')[2]}{rest}"
    return redact_text(url)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every URL in it redacted as `redact_url` does, and each of `secrets` (e.g. a
    webhook URL, secret as a whole) replaced by its host and `/***`, or by `***` without a host."""
    for secret in sorted({secret for secret in secrets if secret}, key=len, reverse=True):
        text = text.replace(secret, _host_only(secret))
    text = _USERINFO.sub(rf"\g<1>{MASK}@", text)
    text = _SECRET_PARAMETER.sub(rf"\g<1>{MASK}", text)
    return _SLACK_WEBHOOK.sub(rf"\g<1>/{MASK}", text)


def _split_authority(url: str) -> tuple[str, str]:
    """(host part, the rest) of a URL without a scheme: the host part ends at the first / ? or #."""
    end = min((url.find(mark) for mark in "/?#" if mark in url), default=len(url))
    return url[:end], url[end:]


def _host_only(secret: str) -> str:
    """How a secret URL is shown: `https://host[:port]/***`, or `***` when it names no host."""
    scheme, separator, rest = secret.partition("://")
    if not separator:
        scheme, rest = "", secret
    try:
        host = urlsplit(f"//{rest}").netloc.rpartition("@")[2]
    except ValueError:
        return MASK
    if not host or not re.fullmatch(r"[\w.-]+(?::\d+)?|\[[0-9a-fA-F:.]+\](?::\d+)?", host):
        return MASK
    return f"{scheme}{separator}{host}/{MASK}"
