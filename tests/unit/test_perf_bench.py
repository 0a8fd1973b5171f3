"""bench/perf_bench.py's parsing of ``python -X importtime`` (the import profile it prints per command)."""

from __future__ import annotations

from bench.perf_bench import import_profile

# As CPython prints it: children before their parent, two spaces of indent per level.
SAMPLE = """import time: self [us] | cumulative | imported package
import time:       100 |        100 |   numpy._core
import time:        50 |         50 |     numpy.linalg._umath
import time:       200 |        250 |   numpy.linalg
import time:       300 |        650 | numpy
import time:        40 |         40 |     typing
import time:        60 |        100 |   rich.console
import time:        20 |        120 | rich
import time:        10 |         10 |   agent.settings
import time:        30 |       1000 | agent
import time:         5 |          5 |   numpy.random
import time:         5 |         10 | json
"""


def test_a_package_counts_its_outermost_imports_once_and_kb_itself_is_left_out() -> None:
    ranked, everything = import_profile(SAMPLE)
    totals = dict(ranked)
    # numpy's own nested imports are inside its 650 us, not added again; numpy.random, imported later
    # by another package (json here), adds its 5 us
    assert totals["numpy"] == 0.655
    assert totals["rich"] == 0.12 and totals["typing"] == 0.04  # typing, imported by rich, counts for itself too
    assert "agent" not in totals  # kb's own package contains everything
    assert "numpy" in totals and list(totals)[0] == "numpy"  # ranked by time
    assert everything == (650 + 120 + 1000 + 10) / 1000  # the top-level imports only
