"""Where a webhook may be sent: no server-side request forgery.

Only http and https, and only to hosts whose every address is public: loopback, private,
link-local (cloud metadata at 169.254.169.254), multicast, reserved and unspecified
addresses are refused, unless the deployment allows private destinations. The check runs
when an endpoint is registered and again before each delivery (DNS answers change), and
the delivery connects to the very address that was checked.
"""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from app.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Destination:
    """A checked URL and the address to connect to for it."""

    url: str
    host: str
    address: str


def resolve_destination(url: str, allow_private: bool) -> Destination:
    """The URL's host resolved and checked; InvalidRequest (param `url`) if refused."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:  # an unbalanced [ or a port out of range
        raise _refused(f"url is not a valid URL: {exc}.", "webhook_url_invalid") from None
    if parts.scheme not in ("http", "https"):
        raise _refused(f"url must use http or https, not '{parts.scheme}'.",
                       "webhook_url_scheme")
    if not host:
        raise _refused("url has no host.", "webhook_url_invalid")
    addresses = _addresses(host, port)
    if not allow_private:
        for address in addresses:
            if is_forbidden(address):
                raise _refused(f"url's host {host} resolves to {address}, a loopback, private, "
                               "link-local or reserved address; webhooks go to public hosts "
                               "only.", "webhook_url_forbidden")
    return Destination(url=url, host=host, address=str(addresses[0]))


def is_forbidden(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (not address.is_global or address.is_private or address.is_loopback
            or address.is_link_local or address.is_multicast or address.is_reserved
            or address.is_unspecified)


def _addresses(host: str, port: int) -> list[IPAddress]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:  # unknown, or not a host name at all
        raise _refused(f"url's host {host} cannot be resolved.",
                       "webhook_url_unresolvable") from exc
    # A scoped IPv6 address ends in %interface, which ip_address does not parse.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in found]


def _refused(message: str, code: str) -> InvalidRequest:
    return InvalidRequest(message, param="url", code=code)
