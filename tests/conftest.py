import signal

import pytest
import torch


def pytest_configure(config):
    # Started as a shell's background job, this process ignores Ctrl-C, and so would
    # every process it starts: the tests that interrupt a run would see nothing. A
    # handler of its own (reset to the default in children) lets Ctrl-C reach them.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
