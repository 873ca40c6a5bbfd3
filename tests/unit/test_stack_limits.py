"""The open-files limit a stack service is started with (``walstream.stack.service``)."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

CHILD = """
import resource, sys
from walstream.stack.service import raise_open_files
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
raise_open_files(int(sys.argv[2]))
print(*resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def limits_after(soft: int, wanted: int) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(soft), str(wanted)], capture_output=True, text=True,
                         timeout=30, check=True)
    a, b = out.stdout.split()
    return int(a), int(b)


@pytest.mark.timeout(60)
def test_a_low_soft_limit_is_raised_at_least_to_the_hard_one_when_more_is_wanted() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"needs a finite hard limit above 256 (have {hard})")
    soft_after, hard_after = limits_after(256, hard * 2)
    # the hard limit itself is raised only where the capability allows it
    assert soft_after >= hard and hard_after >= hard


@pytest.mark.timeout(60)
def test_a_limit_already_high_enough_is_kept() -> None:
    soft_after, _ = limits_after(512, 100)
    assert soft_after == 512
