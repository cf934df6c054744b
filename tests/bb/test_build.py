"""make install honours PREFIX and DESTDIR."""

import os
import subprocess

from conftest import ROOT


def test_make_install_prefix_destdir(tmp_path):
    r = subprocess.run(["make", "-s", "install", "DESTDIR=%s" % tmp_path,
                        "PREFIX=/usr"], cwd=ROOT, capture_output=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    binary = tmp_path / "usr" / "sbin" / "mqttpx"
    assert binary.exists() and os.access(binary, os.X_OK)
    assert (tmp_path / "usr" / "etc" / "mqttpx" /
            "mqttpx.conf.example").exists()
    out = subprocess.run([str(binary), "-h"], capture_output=True, timeout=10)
    assert out.returncode == 0 and b"mqttpx version" in out.stdout
