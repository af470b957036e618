import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread_torch():
    # Tests are small; one intra-op thread keeps timings steady on a 2-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def browser():
    """Real headless Chromium (see browser.py), closed after the test."""
    from browser import ARGS, CHROMIUM
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()
