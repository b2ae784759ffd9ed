"""What taskq says about a Redis URL: whether it is on this machine, and how to show it.

Messages and logs name the broker by its URL, never with its password.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
import warnings

_warned_unsigned: set[str] = set()  # hosts warned about (once each)


def warn_if_unsigned(url: str, signed: bool) -> None:
    """Warn once per host when unsigned payloads go through a Redis not on this machine."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if needs_unsigned_warning(url, signed) and host not in _warned_unsigned:
        _warned_unsigned.add(host)
        warnings.warn(
            f"the Redis broker {safe_url(url)} is not on this machine and no secret is set: "
            "anyone who can write to it can run code on every worker (jobs are pickles). "
            "Set secret= or TASKQ_SECRET to sign every payload",
            RuntimeWarning,
            stacklevel=4,
        )


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


def check_database(url: str) -> None:
    """A redis:// URL's path is its database number: anything else would be ignored
    (redis-py falls back to database 0), and the jobs would go where nobody looks."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise ValueError(
            f"bad Redis broker URL {safe_url(url)!r}: the path is a database number, "
            "as in redis://host:6379/0"
        )
