"""What taskq says about a Redis URL: whether it is on this machine, and how to show it.

Messages and logs name the broker by its URL, never with its password.
"""

from __future__ import annotations

import ipaddress
import urllib.parse


def needs_unsigned_warning(url: str, signed: bool) -> bool:
    """True for unsigned payloads through a Redis that is not on this machine."""
    if signed or url.startswith("unix:"):
        return False
    return not is_loopback(urllib.parse.urlsplit(url).hostname or "")


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
