"""The Add Connection form of the Airflow 3 UI, opened in headless Chromium, shows our connection fields."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from airflow_hpc_provider.get_provider_info import get_provider_info
from tests.deployment.browser import headless_chromium
from tests.deployment.stack import AirflowStack

pytestmark = [pytest.mark.deployment]

CONNECTION_TYPES: list[dict[str, Any]] = [
    kind for kind in get_provider_info()["connection-types"] if kind.get("conn-fields")
]


@pytest.mark.parametrize("kind", CONNECTION_TYPES, ids=[kind["connection-type"] for kind in CONNECTION_TYPES])
def test_the_add_connection_form_shows_every_field_the_provider_declares(
    stack: AirflowStack, kind: dict[str, Any], tmp_path: Path
) -> None:
    labels = [field["label"] for field in kind["conn-fields"].values()]
    relabelled = list(kind.get("ui-field-behaviour", {}).get("relabeling", {}).values())
    with headless_chromium(tmp_path / "profile", tmp_path / "chromedriver.log") as browser:
        browser.open(f"{stack.base_url}/connections")
        browser.click(browser.wait_for("//button[contains(., 'Add Connection')]", 90))
        browser.type(browser.wait_for("//input[@role='combobox']"), kind["hook-name"])
        browser.click(browser.wait_for(f"//*[@role='option'][normalize-space(.)='{kind['hook-name']}']"))
        standard = browser.text()  # the Standard Fields section is open first (it closes for Extra Fields)
        browser.click(browser.wait_for("//button[normalize-space(.)='Extra Fields']"))
        browser.wait_for(f"//*[normalize-space(text())='{labels[-1]}']")
        time.sleep(1.5)  # let the accordions finish their animation before the picture
        text = browser.text()
        screenshot = tmp_path / f"add-connection-{kind['connection-type']}.png"
        browser.screenshot(screenshot)
    shown = [label for label in labels if label in text.splitlines()]
    shown += [label for label in relabelled if label in standard.splitlines()]
    print(f"\n{kind['connection-type']}: {len(shown)} of {len(labels) + len(relabelled)} labels shown; {screenshot}")
    assert shown == [*labels, *relabelled], text
    assert screenshot.stat().st_size > 10_000
