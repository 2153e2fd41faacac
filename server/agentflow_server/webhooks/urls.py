"""Where a webhook may point: http(s) URLs whose host resolves only to public addresses.

A webhook makes the server send requests on a user's behalf; pointed at loopback, a private network, a
link-local range or a cloud metadata address (169.254.169.254, fd00:ec2::254) it would reach what only the
server can reach. Those are refused unless the operator allows private addresses (development, tests).
The address is checked when the endpoint is registered and again before every attempt, since DNS answers
change.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx

MAX_URL = 2048
_RESOLVE_TIMEOUT = 5.0


class DestinationRefused(Exception):
    """The URL's host is, or resolves to, an address webhooks may not reach (or does not resolve)."""


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be a webhook URL, or None when its form is right."""
    if not url:
        return "is required: an https:// or http:// URL"
    if len(url) > MAX_URL:
        return f"must be at most {MAX_URL} characters"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return "is not a valid URL"
    if parsed.scheme not in ("https", "http"):
        return "must be an https:// or http:// URL"
    if not parsed.host:
        return "must name a host"
    if parsed.userinfo:
        # Credentials in a URL end up in logs and listings; endpoints authenticate deliveries by signature.
        return "must not carry a user name or password"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        return "must not contain spaces or control characters"
    return None


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_global:
        return None
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(address, f"is_{kind}"):
            return f"{address} is a {kind.replace('_', '-')} address"
    return f"{address} is not a public address"


async def check_destination(url: str) -> None:
    """Refuse (:class:`DestinationRefused`) unless every address the URL's host resolves to is public."""
    parsed = httpx.URL(url)
    host = parsed.host
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), _RESOLVE_TIMEOUT)
        except (OSError, TimeoutError) as error:
            raise DestinationRefused(f"{host} does not resolve: {error or 'timeout'}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]
    for address in addresses:
        problem = _refusal(address)
        if problem is not None:
            raise DestinationRefused(f"{host}: {problem}; webhooks reach public addresses only")
