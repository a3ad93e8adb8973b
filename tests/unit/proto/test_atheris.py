"""Coverage-guided fuzzing with atheris (libFuzzer) of the boot role's decoders and DHCP servers.

Each target in ``tests/fuzz/atheris_targets.py`` runs in its own process (libFuzzer ends its process
with exit()) for a fixed number of inputs from a fixed seed, so a run is repeatable. It fails when an
input raises or breaks a target's invariant; libFuzzer then prints the input, and it is kept in the
test's temp directory. The inputs that reached new branches must outnumber the seeds: a harness whose
instrumentation broke would otherwise pass without fuzzing anything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fuzz.atheris_targets import TARGETS, make_target, seeds

HARNESS = Path(__file__).resolve().parents[2] / "fuzz" / "atheris_targets.py"
RUNS = 50_000


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_atheris_finds_no_failing_input(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus, work = tmp_path / "corpus", tmp_path / "work"
    corpus.mkdir()
    work.mkdir()
    done = subprocess.run(
        [sys.executable, str(HARNESS), target, "-seed=1", f"-runs={RUNS}", "-max_len=1500", "-timeout=20",
         # no RSS limit: Linux carries the peak RSS over fork and exec (ru_maxrss), so libFuzzer would
         # count the whole test session's peak as its own and stop at once with "out-of-memory"
         "-rss_limit_mb=0",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "BRAMBLE_FUZZ_WORK": str(work)},
    )  # fmt: skip
    output = done.stdout + done.stderr
    failing = sorted(p.name for p in tmp_path.glob("crash-*")) + sorted(p.name for p in tmp_path.glob("timeout-*"))
    assert done.returncode == 0 and not failing, f"{target}: {failing}\n{output[-4000:]}"
    assert f"Done {RUNS} runs" in output, output[-2000:]
    assert "no interesting inputs were found" not in output, output[-2000:]
    found = len(list(corpus.iterdir())) - len(seeds(target))
    assert found > 0, f"{target}: the fuzzer reached no new branch; is bramble instrumented?"
    coverage = [int(c) for c in re.findall(r"cov: (\d+)", output)]
    assert coverage and coverage[-1] > 10, output[-2000:]


@pytest.mark.parametrize("target", TARGETS)
def test_every_seed_passes_its_target(target: str, tmp_path: Path) -> None:
    """The seeds are valid inputs: each target accepts them all (this runs without atheris)."""
    run = make_target(target, tmp_path)
    for seed in seeds(target):
        run(seed)


def test_a_broken_invariant_fails_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The targets check behaviour, not only crashes: a reply to another exchange is caught."""
    import bramble.boot.dhcp as dhcp_module

    run = make_target("dhcp-server", tmp_path)
    discover = seeds("dhcp-server")[0]
    run(discover)  # passes as is
    real = dhcp_module.decide

    def answers_another_exchange(*args: Any, **kwargs: Any) -> Any:
        decision = real(*args, **kwargs)
        if decision.reply is not None:
            decision.reply.xid ^= 1
            decision.wire = None  # encode the altered reply, not the cached bytes
        return decision

    monkeypatch.setattr(dhcp_module, "decide", answers_another_exchange)
    with pytest.raises(AssertionError, match="another exchange"):
        run(discover)
