"""Browser tests: skipped, with the reason, unless MPROFILE_BROWSER_TESTS=1 and Playwright and
Chromium are present (scripts/browser_tests.sh sets that up)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parent.parent))  # tests/_helpers.py

from _chromium import skip_reason  # noqa: E402


def pytest_collection_modifyitems(config, items):
    reason = skip_reason()
    if reason is None:
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=reason))
