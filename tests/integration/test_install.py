"""`make install` lays out the files; the man pages are clean roff and render."""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGES = [os.path.join(REPO, "conf", "tenant-router.8"),
         os.path.join(REPO, "conf", "tenant-router.ini.5")]


def make_install(destdir, *extra):
    # The binary is already built (TR_BIN's default): install copies it; SAN builds live in
    # build/san, so ask for the plain one explicitly only if it is there.
    return subprocess.run(["make", "-s", "--no-print-directory", "install",
                           f"DESTDIR={destdir}", *extra], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.timeout(300)
def test_make_install_lays_out_the_files(tmp_path):
    r = make_install(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "etc/tenant-router/tenant-router.ini",
        "usr/local/bin/tenant-router",
        "usr/local/lib/systemd/system/tenant-router.service",
        "usr/local/lib/systemd/system/tenant-router@.service",
        "usr/local/share/doc/tenant-router/README.md",
        "usr/local/share/doc/tenant-router/tenant-router.ini",
        "usr/local/share/doc/tenant-router/tenant-router.service",
        "usr/local/share/man/man5/tenant-router.ini.5",
        "usr/local/share/man/man8/tenant-router.8",
    ], files
    assert os.access(tmp_path / "usr/local/bin/tenant-router", os.X_OK)
    unit = (tmp_path / "usr/local/lib/systemd/system/tenant-router.service").read_text()
    assert "ExecStart=/usr/local/bin/tenant-router -c /etc/tenant-router/tenant-router.ini" in unit
    # The example configuration is valid as installed.
    r = subprocess.run([str(tmp_path / "usr/local/bin/tenant-router"), "--check", "-c",
                        str(tmp_path / "etc/tenant-router/tenant-router.ini")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.timeout(300)
def test_make_install_keeps_an_existing_config_and_follows_prefix(tmp_path):
    conf = tmp_path / "etc/tenant-router/tenant-router.ini"
    conf.parent.mkdir(parents=True)
    conf.write_text("# mine\n")
    r = make_install(tmp_path, "PREFIX=/opt/tr")
    assert r.returncode == 0, r.stdout + r.stderr
    assert conf.read_text() == "# mine\n"
    unit = (tmp_path / "opt/tr/lib/systemd/system/tenant-router@.service").read_text()
    assert "ExecStart=/opt/tr/bin/tenant-router " in unit
    assert (tmp_path / "opt/tr/share/man/man8/tenant-router.8").exists()


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_man_page_lints_clean(page):
    checked = False
    if shutil.which("mandoc"):
        # -W warning: STYLE notes (a page not in the system's man database) are not faults.
        r = subprocess.run(["mandoc", "-T", "lint", "-W", "warning", page], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr
        checked = True
    if shutil.which("groff"):
        r = subprocess.run(["groff", "-ww", "-man", "-z", page], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
        checked = True
    if not checked:
        pytest.skip("neither mandoc nor groff installed")


@pytest.mark.skipif(shutil.which("man") is None, reason="man not installed")
@pytest.mark.parametrize("page,title", [(PAGES[0], "TENANT-ROUTER(8)"),
                                        (PAGES[1], "TENANT-ROUTER.INI(5)")],
                         ids=["8", "5"])
def test_man_page_renders(page, title):
    r = subprocess.run(["man", "-l", page], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines and lines[0].startswith(title), lines[:3]
    assert "NAME" in lines and "SEE ALSO" in lines
    assert max(len(line) for line in lines) <= 80
    assert "peer_socket_dir" in r.stdout
