"""tests/citus: the router in front of real Citus clusters (make test-citus).

Skips as a whole, with the reason, where Citus is not installed for PostgreSQL 15.
"""

import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))

import topology  # noqa: E402

DEFAULT_TIMEOUT = 120


def pytest_collection_modifyitems(config, items):
    why = topology.citus_missing()
    for item in items:
        if why:
            item.add_marker(pytest.mark.skip(reason=why))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): hard per-test time limit")


@pytest.fixture(autouse=True)
def _hard_timeout(request):
    """SIGALRM fails a test that runs past its timeout (pytest-timeout may be missing)."""
    secs = int(request.node.get_closest_marker("timeout").args[0])

    def on_alarm(signum, frame):
        pytest.fail(f"test exceeded its hard timeout of {secs}s", pytrace=True)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(secs)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for i, r in enumerate(getattr(item.module, "_tr_module_routers", None) or []):
            rep.sections.append((f"router {i} log tail ({r.logfile})", r.log_tail(80)))
