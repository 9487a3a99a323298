"""Where output files may be downloaded from: OUTPUT_URL_PREFIXES and the address checks.

Besides `data:` URIs and the API's own origin, an output is fetched only from a URL under one of
the operator's prefixes. Replicate's delivery hosts (the default) and any https prefix on a public
DNS name are fetched through PublicAddressResolver, which refuses a name resolving into a local
network; a prefix written with `http://`, an IP literal or a private host name is trusted as
written (a gateway or upload server on the LAN).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from bot.backends.base import DownloadError

log = logging.getLogger(__name__)

SETTING = "OUTPUT_URL_PREFIXES"
DEFAULT_OUTPUT_URL_PREFIXES = "https://replicate.delivery/,https://*.replicate.delivery/"
DEFAULT_PORTS = {"http": 80, "https": 443}
# Names that never resolve on the public internet: a prefix on them is a LAN host.
PRIVATE_SUFFIXES = (
    "localhost",
    "lan",
    "local",
    "internal",
    "intranet",
    "corp",
    "home",
    "private",
    "localdomain",
    "home.arpa",
)
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


class LocalAddressRefused(OSError):
    """A delivery host resolved to a loopback, private, link-local or reserved address."""


def is_public_address(address: str) -> bool:
    """True if an IP address is globally routable (not loopback, private, reserved...)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class PublicAddressResolver(AbstractResolver):
    """A resolver that refuses hosts resolving to any non-public address."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve with the inner resolver; any local or private address refuses the host."""
        results = await self._inner.resolve(host, port, family)
        if not results or not all(is_public_address(r["host"]) for r in results):
            raise LocalAddressRefused(f"{host} resolves to a local or private address")
        return results

    async def close(self) -> None:
        """Release the inner resolver."""
        await self._inner.close()


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address a host literal names, or None for a DNS name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_private_name(host: str) -> bool:
    """True for names that only a local network resolves (one label, .lan, .localhost...)."""
    return "." not in host or any(
        host == suffix or host.endswith("." + suffix) for suffix in PRIVATE_SUFFIXES
    )


def _under(path: str, prefix: str) -> bool:
    """True if `path` is `prefix` or lies below it on a segment boundary."""
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True, slots=True)
class OutputPrefix:
    """One entry of OUTPUT_URL_PREFIXES: `scheme://host[:port]/path-prefix`."""

    scheme: str
    host: str  # lower case, no trailing dot; for a wildcard, the domain below `*.`
    wildcard: bool  # `*.host`: any subdomain of host (one or more labels), not host itself
    port: int
    path: str  # decoded, starting with "/"
    trusted_as_written: bool  # http, an IP literal or a private name: no public-address check

    @classmethod
    def parse(cls, text: str) -> OutputPrefix:
        """Parse one entry; ValueError says what is wrong with it."""
        text = text.strip()
        if "@" in text.partition("://")[2].split("/", 1)[0]:
            # Not echoed: the entry carries a password.
            raise ValueError("an entry carries credentials (user:password@), never allowed")
        if "?" in text or "#" in text:
            raise ValueError(f"{text!r} has a query or fragment; give only a URL prefix")
        scheme, sep, rest = text.partition("://")
        wildcard = rest.startswith("*.")
        try:
            url = yarl.URL(f"{scheme}{sep}{rest[2:] if wildcard else rest}")
            port = url.port
        except ValueError:
            raise ValueError(f"{text!r} is not a valid URL") from None
        if not sep or url.scheme not in DEFAULT_PORTS or not url.host:
            raise ValueError(f"{text!r} is not an absolute http:// or https:// URL with a host")
        host = url.host.lower().rstrip(".")
        ip = _ip(host)
        if ip is None and not _DNS_NAME.fullmatch(host):
            raise ValueError(f"{text!r} does not name a valid host")
        if wildcard and ip is not None:
            raise ValueError(f"{text!r}: `*.` must be followed by a DNS name")
        if wildcard and "." not in host and host not in PRIVATE_SUFFIXES:
            # `*.com` would admit most of the internet, and skip the address check besides.
            raise ValueError(
                f"{text!r}: `*.` must be followed by a domain of two or more labels "
                "(such as *.example.com)"
            )
        return cls(
            scheme=url.scheme,
            host=str(ip) if ip is not None else host,
            wildcard=wildcard,
            port=port if port is not None else DEFAULT_PORTS[url.scheme],
            path=url.path or "/",
            trusted_as_written=url.scheme == "http" or ip is not None or _is_private_name(host),
        )

    def matches(self, url: str | yarl.URL) -> bool:
        """True if an output URL lies under this prefix (scheme, host, port and path)."""
        if isinstance(url, str):
            try:
                url = yarl.URL(url)
            except ValueError:
                return False
        if not url.absolute or url.user is not None or url.password is not None:
            return False
        if url.scheme != self.scheme or url.port != self.port or not url.host:
            return False
        host = url.host.lower().rstrip(".")
        wanted_ip = _ip(self.host)
        if wanted_ip is not None:
            if _ip(host) != wanted_ip:
                return False
        elif self.wildcard:
            if not host.endswith("." + self.host):
                return False
        elif host != self.host:
            return False
        # Both forms must lie under the prefix (and `output_url` refuses encoded separators
        # and dot segments, which could leave it on a server that decodes them).
        raw_prefix = yarl.URL.build(path=self.path).raw_path
        return _under(url.path, self.path) and _under(url.raw_path, raw_prefix)

    def __str__(self) -> str:
        """The entry as an operator would write it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == DEFAULT_PORTS[self.scheme] else f":{self.port}"
        return f"{self.scheme}://{'*.' if self.wildcard else ''}{host}{port}{self.path}"


def parse_output_prefixes(text: str) -> tuple[OutputPrefix, ...]:
    """Parse the comma-separated OUTPUT_URL_PREFIXES (empty: no prefixes)."""
    return tuple(OutputPrefix.parse(part) for part in text.split(",") if part.strip())


DEFAULT_OUTPUT_PREFIXES = parse_output_prefixes(DEFAULT_OUTPUT_URL_PREFIXES)


def output_url(url: str) -> yarl.URL:
    """Parse an output URL, refusing anything but plain http(s) without credentials."""
    try:
        target = yarl.URL(url)
    except ValueError:
        raise DownloadError("Refusing to download from a malformed address.") from None
    if not target.absolute or target.scheme not in DEFAULT_PORTS or not target.host:
        raise DownloadError(f"Refusing to download from a {target.scheme or 'relative'} URL.")
    if target.user is not None or target.password is not None:
        raise DownloadError("Refusing to download from an address that carries credentials.")
    if _may_leave_its_folder(target):
        raise DownloadError("Refusing to download from an address whose path leaves its folder.")
    return target


def _may_leave_its_folder(url: yarl.URL) -> bool:
    """True if a file server could read the path as outside the folder it names.

    An encoded slash or backslash, or a `.`/`..` segment (however encoded), would pass a prefix
    test on the text and still reach another folder on a server that decodes them.
    """
    raw = url.raw_path.lower()
    if "%2f" in raw or "%5c" in raw or "\\" in url.path:
        return True
    # `..;x` is `..` to servers that read path parameters (Tomcat and its kind).
    return any(segment.split(";", 1)[0] in (".", "..") for segment in url.path.split("/"))


def allowed_prefix(url: yarl.URL, prefixes: Sequence[OutputPrefix]) -> OutputPrefix:
    """The prefix that allows an output URL; DownloadError (and a warning) if none does."""
    for prefix in prefixes:
        if prefix.matches(url):
            return prefix
    host = (url.host or "").rstrip(".")[:100]
    log.warning(
        "refused an output on host %s:%s: add its URL prefix to %s to allow it",
        host,
        url.port,
        SETTING,
    )
    raise DownloadError(f"The output's host ({host}) is not allowed by this bot's settings.")
