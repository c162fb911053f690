"""Browser tests: the approval inbox in headless Chromium, against a real worker and broker.

Every test here is marked ``browser`` (select with ``pytest -m browser``) and ``integration``
(it needs the broker). They run Debian's ``chromium`` package (``/usr/bin/chromium``) through
Playwright; Playwright's own browser downloads are never used. Without ``/usr/bin/chromium``
they are skipped, saying so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

_HERE = Path(__file__).parent
CHROMIUM = Path("/usr/bin/chromium")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives the approval inbox in headless Chromium (/usr/bin/chromium)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not item.path.is_relative_to(_HERE):
            continue
        item.add_marker(pytest.mark.browser)
        item.add_marker(pytest.mark.integration)
        if not CHROMIUM.exists():
            item.add_marker(
                pytest.mark.skip(
                    reason=f"{CHROMIUM} is missing: install Debian's chromium package "
                    "(apt-get install -y chromium) to run the browser tests"
                )
            )


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium: Debian's, never a browser Playwright downloads."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            await launched.close()
