"""Address and MAC allocation for VM networks: pure decisions that core makes inside its write transaction."""

from bramble.ipam.allocate import (
    DEFAULT_QUARANTINE,
    AddressError,
    AddressInQuarantine,
    AddressInUse,
    AddressNotAssignable,
    AddressOutsideNetwork,
    InvalidNetwork,
    IpamError,
    NetworkExhausted,
    Subnet,
    check_requested,
    choose_address,
    parse_network,
    quarantined,
)
from bramble.ipam.mac import MAC_PREFIX, MacExhausted, is_bramble_mac, new_mac, normalise_mac

__all__ = [
    "DEFAULT_QUARANTINE",
    "MAC_PREFIX",
    "AddressError",
    "AddressInQuarantine",
    "AddressInUse",
    "AddressNotAssignable",
    "AddressOutsideNetwork",
    "InvalidNetwork",
    "IpamError",
    "MacExhausted",
    "NetworkExhausted",
    "Subnet",
    "check_requested",
    "choose_address",
    "is_bramble_mac",
    "new_mac",
    "normalise_mac",
    "parse_network",
    "quarantined",
]
