"""Shared fixtures.

``SHARED`` is the folder of public test material that sits beside the checkout (``../shared``):
the corpus of sample messages, the official schemas and the NIST test studies. Tests read it
in place and never copy it into the project.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XDSI_TEST_SHARED", ROOT.parent / "shared"))
CORPUS = SHARED / "corpus"
SCHEMAS = SHARED / "reference-schemas"
NIST_IDS = SHARED / "datasets" / "nist-ids"


def require_tool(name: str) -> str:
    """The path of a command-line tool the test needs; fail (not skip) when CI lacks it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} is not installed")
    return path
