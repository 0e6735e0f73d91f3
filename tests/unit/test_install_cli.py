"""`ctloop install` runs in the deploy stage's image (k8s/jobs/install), which carries no torch:
the CLI and the install module must import and parse without it."""

from __future__ import annotations

import subprocess
import sys

from cicd_support import ROOT

WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` now fails
from ctloop_app.cli import _parser
import ctloop_app.install
args = _parser().parse_args(["install", "--models", "m", "--model-store", "s", "--golden-set", "g.npz"])
assert args.command.__name__ == "_install"
print("ok")
"""


def test_install_needs_no_torch() -> None:
    result = subprocess.run([sys.executable, "-c", WITHOUT_TORCH], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
