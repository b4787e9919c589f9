"""The connection pages of the Airflow 3 UI, in headless Chromium, for this provider's connection types.

* The Add Connection form shows every field the provider declares.
* The Test button of a ``slurm`` connection says it works, or in words why it does not.
* A private key pasted into the form (through the clipboard, as a person would) keeps its line
  breaks, is masked once saved, and a task runs on the cluster with it.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.keys import Keys

from airflow_hpc_provider.get_provider_info import get_provider_info
from tests.deployment.browser import Browser, headless_chromium
from tests.deployment.conftest import cancel_jobs_named
from tests.deployment.stack import AirflowStack, StackError
from tests.integration import cluster

pytestmark = [pytest.mark.deployment]

CONNECTION_TYPES: list[dict[str, Any]] = [
    kind for kind in get_provider_info()["connection-types"] if kind.get("conn-fields")
]
KEY_FILE = cluster.CLUSTER_DIR / "ssh" / "id_ed25519"
KNOWN_HOSTS = cluster.CLUSTER_DIR / "ssh" / "known_hosts"


def add_connection(stack: AirflowStack, conn_id: str, **fields: Any) -> None:
    """Create (or replace) a connection in the metadata database, as the UI's list shows it."""
    with contextlib.suppress(StackError):
        stack.request("DELETE", f"/api/v2/connections/{conn_id}")
    stack.request("POST", "/api/v2/connections", {"connection_id": conn_id, "conn_type": "slurm", **fields})


def open_add_connection_form(browser: Browser, stack: AirflowStack, hook_name: str) -> None:
    browser.open(f"{stack.base_url}/connections")
    browser.click(browser.wait_for("//button[contains(., 'Add Connection')]", 90))
    browser.type(browser.wait_for("//input[@role='combobox']"), hook_name)
    browser.click(browser.wait_for(f"//*[@role='option'][normalize-space(.)='{hook_name}']"))


@pytest.mark.parametrize("kind", CONNECTION_TYPES, ids=[kind["connection-type"] for kind in CONNECTION_TYPES])
def test_the_add_connection_form_shows_every_field_the_provider_declares(
    stack: AirflowStack, kind: dict[str, Any], tmp_path: Path
) -> None:
    labels = [field["label"] for field in kind["conn-fields"].values()]
    relabelled = list(kind.get("ui-field-behaviour", {}).get("relabeling", {}).values())
    with headless_chromium(tmp_path / "profile", tmp_path / "chromedriver.log") as browser:
        open_add_connection_form(browser, stack, kind["hook-name"])
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


def press_test(browser: Browser, conn_id: str) -> str:
    """Press the Test button of a connection's row and return what the UI answers (title and message)."""
    row = browser.wait_for(f"//tr[.//*[normalize-space(text())='{conn_id}']]", 90)
    row.find_element("xpath", ".//button[@aria-label='Test Connection']").click()
    verdict = browser.wait_for(
        "//*[normalize-space(text())='Test Connection Successful' or normalize-space(text())='Test Connection Failed']",
        90,
    )
    toast = verdict.find_element("xpath", "./..")
    return str(toast.text)


def test_the_test_button_says_a_good_slurm_connection_works_and_why_a_broken_one_does_not(
    stack: AirflowStack, tmp_path: Path
) -> None:
    extra = json.dumps({"key_file": str(KEY_FILE), "known_hosts": str(KNOWN_HOSTS), "account": "myacct"})
    add_connection(stack, "slurm_ui_good", host="127.0.0.1", port=2222, login="hpcuser", extra=extra)
    broken = json.dumps({"key_file": str(KEY_FILE), "known_hosts": str(KNOWN_HOSTS), "account": "not_mine"})
    add_connection(stack, "slurm_ui_broken", host="127.0.0.1", port=2222, login="hpcuser", extra=broken)
    with headless_chromium(tmp_path / "profile", tmp_path / "chromedriver.log") as browser:
        browser.open(f"{stack.base_url}/connections")
        good = press_test(browser, "slurm_ui_good")
        browser.screenshot(tmp_path / "test-button-good.png")
        browser.open(f"{stack.base_url}/connections")  # a fresh page: the first toast is gone
        bad = press_test(browser, "slurm_ui_broken")
        browser.screenshot(tmp_path / "test-button-broken.png")
    print(f"\nTest button answers:\n  {good!r}\n  {bad!r}\n  screenshots in {tmp_path}")
    assert good.startswith("Test Connection Successful\nConnected to hpcuser@127.0.0.1:2222: slurm-wlm 22.05"), good
    assert "Partitions you may use: debug (default), long." in good
    assert bad.startswith("Test Connection Failed\nConnected to hpcuser@127.0.0.1:2222"), bad
    assert "the connection's default account 'not_mine' is not one of yours" in bad


def test_the_test_button_names_a_login_node_nobody_answers_on(stack: AirflowStack, tmp_path: Path) -> None:
    from tests.deployment.stack import free_port

    extra = json.dumps({"key_file": str(KEY_FILE), "known_hosts": str(KNOWN_HOSTS)})
    add_connection(stack, "slurm_ui_nobody", host="127.0.0.1", port=free_port(), login="hpcuser", extra=extra)
    with headless_chromium(tmp_path / "profile", tmp_path / "chromedriver.log") as browser:
        browser.open(f"{stack.base_url}/connections")
        answer = press_test(browser, "slurm_ui_nobody")
    assert answer.startswith("Test Connection Failed\nUnreachable: cannot reach hpcuser@127.0.0.1:"), answer


def paste(browser: Browser, base_url: str, field_xpath: str, text: str) -> None:
    """Put ``text`` on the clipboard and paste it into a field with Ctrl+V, as a person would."""
    permissions = ["clipboardReadWrite", "clipboardSanitizedWrite"]
    browser.driver.execute_cdp_cmd("Browser.grantPermissions", {"origin": base_url, "permissions": permissions})
    written = browser.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "navigator.clipboard.writeText(arguments[0]).then(() => done('ok'), (error) => done(String(error)));",
        text,
    )
    assert written == "ok", written
    field = browser.wait_for(field_xpath)
    field.click()
    field.send_keys(Keys.CONTROL, "v")


def test_a_private_key_pasted_into_the_form_keeps_its_lines_and_a_task_runs_with_it(
    stack: AirflowStack, tmp_path: Path
) -> None:
    conn_id = "slurm_pasted_key"
    with contextlib.suppress(StackError):
        stack.request("DELETE", f"/api/v2/connections/{conn_id}")
    key = KEY_FILE.read_text()
    assert key.count("\n") > 3  # a real multi-line OpenSSH key
    with headless_chromium(tmp_path / "profile", tmp_path / "chromedriver.log") as browser:
        open_add_connection_form(browser, stack, "Slurm (over SSH)")
        browser.type(browser.wait_for("//input[@name='connection_id']"), conn_id)
        browser.type(browser.wait_for("//input[@name='host']"), "127.0.0.1")
        browser.type(browser.wait_for("//input[@name='login']"), "hpcuser")
        browser.type(browser.wait_for("//input[@name='port']"), "2222")
        browser.click(browser.wait_for("//button[normalize-space(.)='Extra Fields']"))
        paste(browser, stack.base_url, "//textarea[@id='element_private_key']", key)
        pasted = browser.wait_for("//textarea[@id='element_private_key']").get_attribute("value") or ""
        browser.type(browser.wait_for("//textarea[@id='element_known_hosts']"), str(KNOWN_HOSTS))
        browser.type(browser.wait_for("//input[@id='element_account']"), "myacct")
        time.sleep(1)
        browser.screenshot(tmp_path / "pasted-key-form.png")
        browser.click(browser.wait_for("//button[normalize-space(.)='Save']"))
        saved = stack.wait(lambda: _connection(stack, conn_id), 60, f"connection {conn_id} to be saved")
        # Reopened for editing, the form shows the key masked, not the key.
        browser.open(f"{stack.base_url}/connections")
        row = browser.wait_for(f"//tr[.//*[normalize-space(text())='{conn_id}']]", 90)
        row.find_element("xpath", ".//button[@aria-label='Edit Connection']").click()
        browser.click(browser.wait_for("//button[normalize-space(.)='Extra Fields']"))
        shown = browser.wait_for("//textarea[@id='element_private_key']").get_attribute("value")
        browser.screenshot(tmp_path / "pasted-key-edit.png")
    assert pasted.strip() == key.strip(), "the form lost the key's line breaks"
    assert json.loads(saved["extra"])["private_key"] == "***"  # the REST API masks it
    assert shown == "***"
    run_id = stack.trigger("dep_pasted_key")
    try:
        run = stack.wait_for_run_end("dep_pasted_key", run_id, 300)
        log = "\n".join(stack.task_log("dep_pasted_key", run_id, "job", 1))
        assert run["state"] == "success", log[-3000:]
        assert "reached the cluster with the key pasted into the form" in log
    finally:
        cancel_jobs_named(f"airflow-dep-{run_id}")
    print(f"\npasted-key screenshots in {tmp_path}")


def _connection(stack: AirflowStack, conn_id: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = stack.get(f"/api/v2/connections/{conn_id}")
    except StackError:
        return None
    return found
