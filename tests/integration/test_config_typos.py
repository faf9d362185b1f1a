"""A configuration typo never silently changes where tenants go.

`--check` refuses each typo with exit 1 and one line per problem naming file, line, section and
key; a SIGHUP reload with such a file keeps the running configuration and logs why.
"""

import re

import pytest

import harness


def cluster_ini(r, **sections):
    """The router's INI text with some sections replaced (a value of None drops the section)."""
    return harness.render_ini(harness.merge(r.cfg, sections))


def line_of(text, needle):
    """1-based line number of the first line equal to needle."""
    return text.splitlines().index(needle) + 1


def a_host(r):
    return f"127.0.0.1:{r.cluster_port('a')}"


def b_host(r):
    return f"127.0.0.1:{r.cluster_port('b')}"


def replace_section(text, header, new_header):
    assert header in text
    return text.replace(header, new_header, 1)


# Each case: (id, function router -> INI text, [regex per expected problem line]).
# The regexes are matched against stderr after "FILE:".
CASES = [
    ("empty-cluster-section",
     lambda r: cluster_ini(r, **{"cluster.b": {"hosts": None, "weight": None}}),
     [r"(?P<l>\d+): \[cluster\.b\] hosts: missing \(every cluster needs hosts; to remove a "
      r"cluster, delete its section\)$"]),
    ("cluster-section-weight-only",
     lambda r: cluster_ini(r, **{"cluster.b": {"hosts": None, "weight": "2"}}),
     [r"\d+: \[cluster\.b\] hosts: missing"]),
    ("cluster-section-given-twice",
     lambda r: cluster_ini(r) + "[cluster.a]\nweight = 3\n",
     [r"\d+: \[cluster\.a\]: section given twice \(first at line \d+\)$"]),
    ("hosts-twice-in-one-section",
     lambda r: cluster_ini(r).replace(f"hosts = {b_host(r)}\n",
                                      f"hosts = {b_host(r)}\nhosts = {a_host(r)}\n"),
     [r"\d+: \[cluster\.b\] hosts: set twice$"]),
    ("weight-zero", lambda r: cluster_ini(r, **{"cluster.b": {"weight": "0"}}),
     [r"\d+: \[cluster\.b\] weight: \"0\" is not a whole number from 1 to 1000$"]),
    ("weight-negative", lambda r: cluster_ini(r, **{"cluster.b": {"weight": "-2"}}),
     [r"\d+: \[cluster\.b\] weight: \"-2\" is not a whole number"]),
    ("weight-not-a-number", lambda r: cluster_ini(r, **{"cluster.b": {"weight": "two"}}),
     [r"\d+: \[cluster\.b\] weight: \"two\" is not a whole number"]),
    ("vnodes-zero", lambda r: cluster_ini(r, ring={"vnodes": "0"}),
     [r"\d+: \[ring\] vnodes: \"0\" is not a whole number"]),
    ("unknown-key-in-cluster",
     lambda r: cluster_ini(r, **{"cluster.b": {"hosts": None, "host": b_host(r)}}),
     [r"\d+: \[cluster\.b\] host: unknown setting$", r"\d+: \[cluster\.b\] hosts: missing"]),
    ("section-cluster-without-name",
     lambda r: replace_section(cluster_ini(r), "[cluster.b]", "[cluster]"),
     [r"\d+: \[cluster\]: unknown section \(sections are router, auth, health, ring, pins, "
      r"directory, move, cluster\.NAME and route\.NAME\)$"]),
    ("section-clusters-plural",
     lambda r: replace_section(cluster_ini(r), "[cluster.b]", "[clusters.b]"),
     [r"\d+: \[clusters\.b\]: unknown section"]),
    ("section-capitalised",
     lambda r: replace_section(cluster_ini(r), "[cluster.b]", "[Cluster.b]"),
     [r"\d+: \[Cluster\.b\]: unknown section"]),
    ("empty-cluster-name",
     lambda r: replace_section(cluster_ini(r), "[cluster.b]", "[cluster.]"),
     [r"\d+: \[cluster\.\]: cluster names are 1 to 41 letters, digits, '_' or '-'$"]),
    ("host-listed-twice",
     lambda r: cluster_ini(r, **{"cluster.b": {"hosts": f"{b_host(r)}, {b_host(r)}"}}),
     [r"\d+: \[cluster\.b\] hosts: 127\.0\.0\.1:\d+ is listed twice$"]),
    ("host-in-two-clusters",
     lambda r: cluster_ini(r, **{"cluster.b": {"hosts": a_host(r)}}),
     [r"\d+: \[cluster\.b\] hosts: 127\.0\.0\.1:\d+ is also a host of \[cluster\.a\] "
      r"\(line \d+\): two clusters cannot share a server$"]),
    ("setting-before-any-section",
     lambda r: "vnodes = 64\n" + cluster_ini(r),
     [r"1: vnodes: setting before the first \[section\]$"]),
]


@pytest.mark.parametrize("name,make_ini,want", CASES, ids=[c[0] for c in CASES])
def test_check_refuses_typo(make_router, name, make_ini, want):
    r = make_router(start=False)
    text = make_ini(r)
    path = r.write_file("bad.ini", text)
    res = r.check(ini=path)
    assert res.returncode == 1, f"--check accepted it:\n{text}\n{res.stdout}"
    assert "configuration ok" not in res.stdout
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == len(want), f"want one line per problem, got:\n{res.stderr}"
    for rx in want:
        hits = [m for m in (re.match(re.escape(path) + ":" + rx, l) for l in lines) if m]
        assert hits, f"no line matching {rx!r} in:\n{res.stderr}"
        if "l" in hits[0].groupdict():
            # The problem names the section's own line.
            assert int(hits[0].group("l")) == line_of(text, "[cluster.b]"), res.stderr


def test_check_reports_every_typo_at_once(make_router):
    r = make_router(start=False)
    text = (cluster_ini(r, **{"cluster.b": {"hosts": None, "weight": None}})
            + "[cluster.c]\nweight = 0\n\n[clusters.d]\nhosts = 127.0.0.1:1\n\n"
            + f"[cluster.e]\nhosts = {a_host(r)}\n")
    path = r.write_file("many.ini", text)
    res = r.check(ini=path)
    assert res.returncode == 1
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    for rx in (r"\[cluster\.b\] hosts: missing", r"\[cluster\.c\] weight: \"0\"",
               r"\[clusters\.d\]: unknown section", r"\[cluster\.c\] hosts: missing",
               r"\[cluster\.e\] hosts: 127\.0\.0\.1:\d+ is also a host of \[cluster\.a\]"):
        assert any(re.search(rx, l) for l in lines), f"{rx!r} not reported:\n{res.stderr}"
    assert len(lines) == 5, res.stderr
    assert all(re.match(re.escape(path) + r":\d+: \[", l) for l in lines), res.stderr


def ring_tenant(r, cluster, prefix):
    for t, (c, how) in r.route([f"{prefix}{i}" for i in range(100)]).items():
        if c == cluster and how == "ring":
            return t
    raise AssertionError(f"no tenant of {cluster} among 100")


@pytest.mark.timeout(90)
def test_reload_with_typo_keeps_running_config(make_router, clusters):
    r = make_router()
    tb, ta = ring_tenant(r, "b", "typo-b-"), ring_tenant(r, "a", "typo-a-")
    b_port, a_port = clusters["b"].port, clusters["a"].port
    assert r.server_port(tb) == b_port
    good = open(r.ini).read()

    bad_files = [
        # The case that used to reload as "1 clusters" and send b's tenants to a.
        (cluster_ini(r, **{"cluster.b": {"hosts": None, "weight": None}}),
         r"\[cluster\.b\] hosts: missing"),
        (replace_section(good, "[cluster.b]", "[clusters.b]"), r"\[clusters\.b\]: unknown section"),
        (cluster_ini(r, **{"cluster.b": {"hosts": a_host(r)}}),
         r"\[cluster\.b\] hosts: .* is also a host of \[cluster\.a\]"),
    ]
    for text, why in bad_files:
        r.write_config(raw_ini=text)
        off = r.log_size()
        assert r.reload() == "failed", f"reload accepted:\n{text}"
        log = r.log_since(off)
        assert re.search(r"reload failed, keeping the running configuration: .*router\.ini:\d+: "
                         + why, log), log
        assert r.alive()
        # The running ring is untouched: b's tenant still reaches b, a's still a.
        assert r.server_port(tb) == b_port, "a refused reload moved a tenant of b"
        assert r.server_port(ta) == a_port

    r.write_config(raw_ini=good)
    assert r.reload() == "ok"
    assert r.server_port(tb) == b_port
