"""The client a per-client limit counts (the hosted pages' submissions, console sign-ins)."""
from __future__ import annotations

import ipaddress


def client_network(address: str) -> str:
    """Its IPv4 address, or its IPv6 /64: one host has them all."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)
