"""Which addresses an image fetch may connect to, and resolving a host once.

Refused unless an allowlisted network (``--image-fetch-allow``) holds it: every address that is not public, named
by what it is in the error. IPv4 inside IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, 6to4, Teredo, NAT64) is judged by the
IPv4 address it carries, so ``::ffff:127.0.0.1`` is loopback. Hosts are resolved by the system resolver, which also
reads the odd IPv4 spellings (``2130706433``, ``0x7f.1``, ``017700000001``) as the address they are; the check sees
that address, never the spelling.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

from embedserve.errors import ImageFetchError, ImageURLRefusedError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> addresses``: the system resolver by default; tests may pass their own."""

METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")}
"""Cloud metadata services (AWS, ECS, Alibaba, AWS over IPv6): refused like any non-public address, and named."""
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(address: Address) -> Address:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo's client, NAT64), else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def what_is_not_public(address: Address) -> str | None:
    """Why ``address`` is not a public one (``loopback``, ``private``, ...), or None when it is."""
    inner = embedded_ipv4(address)
    candidates = (address,) if inner == address else (inner, address)  # what it carries is what it reaches
    if any(candidate in METADATA for candidate in candidates):
        return "a cloud metadata service"
    for candidate in candidates:
        for name, test in (("unspecified", candidate.is_unspecified), ("loopback", candidate.is_loopback),
                           ("link-local", candidate.is_link_local), ("multicast", candidate.is_multicast),
                           ("reserved", candidate.is_reserved), ("private", candidate.is_private),
                           ("not public", not candidate.is_global)):  # fmt: skip
            if test:
                return name
    return None


class AddressPolicy:
    """Public addresses, plus the networks an operator allowed."""

    def __init__(self, allow: Sequence[str] = ()) -> None:
        self.allow: tuple[Network, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in allow)

    def check(self, address: Address, host: str) -> None:
        """Raise :class:`ImageURLRefusedError` unless a fetch may connect to ``address`` (resolved from ``host``)."""
        if any(address in network or embedded_ipv4(address) in network for network in self.allow):
            return
        reason = what_is_not_public(address)
        if reason is not None:
            via = "" if host == str(address) else f" ({host} resolves to it)"
            raise ImageURLRefusedError(f"the image URL's address is {reason}{via}; the server fetches public "
                                       "addresses only, or those --image-fetch-allow names")  # fmt: skip


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives ``host``, once."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def resolve_checked(host: str, port: int, policy: AddressPolicy, resolver: Resolver) -> Address:
    """The address to connect to: ``host`` itself when it is an address literal, else resolved once. Every address
    the name resolves to must pass (a name that also points inside is refused, whichever address a later lookup
    would pick); the first is returned and is the one connected to, with no second lookup."""
    try:
        literal: Address | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        policy.check(literal, host)
        return literal
    try:
        found = [ipaddress.ip_address(a.split("%", 1)[0]) for a in await resolver(host, port)]
    except (OSError, UnicodeError, ValueError):
        found = []
    if not found:
        raise ImageFetchError("the image URL's host does not resolve")
    for address in found:
        policy.check(address, host)
    return found[0]
