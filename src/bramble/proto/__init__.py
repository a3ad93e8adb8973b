"""Wire formats as pure encode/decode code, shared by Bramble's servers and their tests.

Standard library only (no sockets, no asyncio, no other Bramble modules), so every format can be
fuzzed and checked byte for byte without a network.
"""
