"""`python -m vkq info` (the bench is a tool and is not run by the suite)."""
from __future__ import annotations

import subprocess
import sys


def test_info_lists_devices_and_variant_choices():
    r = subprocess.run([sys.executable, "-m", "vkq", "info"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "(default)" in r.stdout and "integer_dot_product" in r.stdout
    assert "rms_norm_vec4" in r.stdout
