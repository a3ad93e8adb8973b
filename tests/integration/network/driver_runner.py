"""Run BridgeDriver calls inside the namespace this process was started in (via ``ip netns exec``).

stdin: a pickled list of ``(method, args)``; stdout: a pickled list of ``("ok", result)`` or
``("error", exception)``, stopping at the first error. ``nft_apply`` runs a raw JSON batch and
``nft_apply_text`` a raw nft-syntax one (to prove that the kernel refuses a whole batch when one command in
it is bad). All calls of one run share one driver, so a second ``apply_security`` is incremental;
``firewall_mode`` says how the last one went (delta or full); ``nft_text`` returns what ``nft list
table`` prints.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from typing import Any

from bramble.network.bridge import BridgeDriver
from bramble.network.nft import Nft


def main() -> None:
    calls: list[tuple[str, tuple[Any, ...]]] = pickle.load(sys.stdin.buffer)
    driver = BridgeDriver()
    results: list[tuple[str, Any]] = []
    for method, args in calls:
        try:
            if method == "nft_apply":
                Nft().apply(*args)
                value: Any = None
            elif method == "nft_apply_text":
                Nft().apply_text(*args)
                value = None
            elif method == "firewall_mode":
                value = driver.firewall.last_mode
            elif method == "nft_text":
                value = subprocess.run(["nft", "list", "table", *args], capture_output=True, text=True).stdout
            elif method == "nft_list":
                value = Nft().list_table(*args)
            else:
                value = getattr(driver, method)(*args)
        except Exception as exc:
            results.append(("error", exc))
            break
        results.append(("ok", value))
    sys.stdout.buffer.write(pickle.dumps(results))


if __name__ == "__main__":
    main()
