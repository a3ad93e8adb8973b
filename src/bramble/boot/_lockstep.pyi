# The C lock-step loop (see _lockstep.c); built by setup.py when a compiler is present.
def run(
    fd: int,
    receive: bytearray,
    slab: memoryview,
    start: int,
    end: int,
    packet_size: int,
    end_length: int,
    expected: int,
    spin_ns: int,
    credit: int,
    /,
) -> tuple[int, int, int, int, int]: ...
def credit_max() -> int: ...
