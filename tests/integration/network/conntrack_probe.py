"""Run inside a throwaway namespace by test_conntrack.py: make flows, cut some, print what happened as JSON."""

from __future__ import annotations

import json
import socket
import sys
from ipaddress import IPv4Address

from pyroute2 import Conntrack

from bramble.network.conntrack import _dump_entries, cut_disallowed
from bramble.network.driver import Rule, SecurityPolicy

udp_flows = int(sys.argv[1])
for i in range(udp_flows):  # half to the "VM" 127.0.0.2, which admits only tcp/7000; half elsewhere
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 20000 + i))  # distinct tuples: a reused port would merge two
        s.sendto(b"x", ("127.0.0.2" if i % 2 else "127.0.0.3", 9000))
with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:  # an echo request
    s.sendto(b"\x08\x00\xf7\xfe\x00\x01\x00\x00", ("127.0.0.2", 0))
listener = socket.create_server(("127.0.0.2", 7000))
allowed = socket.create_connection(("127.0.0.2", 7000))
refused_port = socket.create_server(("127.0.0.2", 7001))
refused = socket.create_connection(("127.0.0.2", 7001))

vm = SecurityPolicy("bt-probe", "bb-probe", "02:00:00:00:00:02", IPv4Address("127.0.0.2"), (Rule("tcp", 7000),))
ours = [(e.orig.daddr, e.orig.proto, e.orig.dport) for e in _dump_entries()]
with Conntrack() as ct:  # pyroute2 as the oracle for the dump
    theirs = [(e.tuple_orig.daddr, e.tuple_orig.proto, e.tuple_orig.dport) for e in ct.dump_entries()]
cut = cut_disallowed([vm], {})
again = cut_disallowed([vm], {})
left = sorted({(e.orig.daddr, e.orig.proto, e.orig.dport) for e in _dump_entries()}, key=str)
print(json.dumps({"ours": sorted(ours, key=str), "theirs": sorted(theirs, key=str), "cut": cut, "again": again,
                  "left": left}))  # fmt: skip
