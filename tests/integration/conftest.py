"""Fixtures: two real PostgreSQL servers for the whole session, routers per test.

Run with Debian's python:  /usr/bin/python3 -m pytest -q tests/integration
"""

import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import harness  # noqa: E402

DEFAULT_TIMEOUT = 60

try:
    import pytest_timeout  # noqa: F401
    HAVE_PYTEST_TIMEOUT = True
except ImportError:
    HAVE_PYTEST_TIMEOUT = False


def pytest_configure(config):
    if not HAVE_PYTEST_TIMEOUT:
        config.addinivalue_line("markers", "timeout(seconds): hard per-test time limit")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


@pytest.fixture(autouse=True)
def _hard_timeout(request):
    """Fallback when python3-pytest-timeout is missing: SIGALRM fails the test."""
    if HAVE_PYTEST_TIMEOUT:
        yield
        return
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
    """On failure, attach the tail of every router log the test owned."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for i, r in enumerate(getattr(item, "_tr_routers", [])):
            rep.sections.append((f"router {i} log tail ({r.logfile})", r.log_tail(80)))
        # Routers shared by a module (make_module_router) are reported too.
        for i, r in enumerate(getattr(item.module, "_tr_module_routers", None) or []):
            rep.sections.append((f"module router {i} log tail ({r.logfile})", r.log_tail(80)))


@pytest.fixture(scope="session")
def clusters():
    """{'a': PgServer, 'b': PgServer}, both running; tests that stop one restart it."""
    servers = harness.start_clusters(("a", "b"))
    try:
        yield servers
    finally:
        for s in servers.values():
            s.cleanup()


@pytest.fixture(autouse=True)
def _clusters_healthy_after(request):
    """A test that stopped a server must leave it running; make sure, and fail loudly if not."""
    yield
    if "clusters" not in request.fixturenames:
        return
    servers = request.getfixturevalue("clusters")
    for s in servers.values():
        if not s.running or not s.is_up():
            try:
                s.start() if not s.running else s.restart()
            finally:
                pytest.fail(f"test left cluster {s.name} down")


def pytest_generate_tests(metafunc):
    """A module with POOL_MODES = ("none", "session") runs each of its tests once per mode:
    its routers (make_router, router, make_module_router) get pool_mode from the parameter."""
    modes = getattr(metafunc.module, "POOL_MODES", None)
    if modes and "pool_mode" in metafunc.fixturenames:
        metafunc.parametrize("pool_mode", modes, scope="module")


@pytest.fixture(scope="module")
def pool_mode():
    """The routers' pool_mode: "none" unless the module parametrizes it (POOL_MODES)."""
    return "none"


def _router_factory(clusters, routers, mark_start_failures=False, pool_mode="none"):
    """The factory both router fixtures hand out; every router made goes into routers."""
    def factory(overrides=None, pins_file=None, raw_ini=None, start=True, env=None,
                cluster_set=None, nofile=None, port=None):
        r = harness.Router(cluster_set if cluster_set is not None else clusters,
                           overrides=overrides, pins_file=pins_file, raw_ini=raw_ini, env=env,
                           nofile=nofile, port=port, pool_mode=pool_mode)
        routers.append(r)
        if start:
            try:
                r.start()
            except Exception:
                # Reported by the test (or fixture) that asked for it, with the log tail;
                # not again when the module ends.
                if mark_start_failures:
                    r._start_failed = True
                raise
        return r
    return factory


def _stop_and_check(routers, label, died_during):
    """Stops routers and fails (once, with every problem) on a death, a bad exit code or a
    sanitizer report."""
    problems = []
    for i, r in enumerate(routers):
        if r.proc is None or getattr(r, "_start_failed", False):
            r.close()
            continue
        died = r.proc.poll() is not None and r.returncode is None
        try:
            if died:
                problems.append(f"{label} {i} died{died_during} with exit code "
                                f"{r.proc.returncode}")
            rc = r.stop()
            if rc not in (0, None) and not died:
                problems.append(f"{label} {i} exited {rc} after SIGTERM")
        except AssertionError as e:
            problems.append(str(e))
        rep = r.sanitizer_report()
        if rep:
            problems.append(f"{label} {i} sanitizer report:\n{rep}")
        if problems:
            print(f"\n--- {label} {i} log tail ---\n{r.log_tail(80)}")
        r.close()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def make_router(request, clusters, pool_mode):
    """Factory: make_router(overrides=None, pins_file=None, raw_ini=None, start=True).
    cluster_set={name: PgServer} puts other servers behind the router (default: clusters);
    nofile=N runs it under RLIMIT_NOFILE N."""
    routers = []
    request.node._tr_routers = routers
    yield _router_factory(clusters, routers, pool_mode=pool_mode)
    _stop_and_check(routers, "router", " during the test")


@pytest.fixture
def router(make_router):
    """A router with the default test configuration (clusters a and b, no pins)."""
    return make_router()


@pytest.fixture(scope="module")
def make_module_router(request, clusters, pool_mode):
    """Like make_router, but the routers live for the whole test module (share one router
    between tests to keep a module fast).  Same arguments; the routers are stopped and
    checked (exit code, sanitizer report) when the module ends."""
    routers = []
    request.module._tr_module_routers = routers
    yield _router_factory(clusters, routers, mark_start_failures=True, pool_mode=pool_mode)
    request.module._tr_module_routers = []
    _stop_and_check(routers, "module router", "")
