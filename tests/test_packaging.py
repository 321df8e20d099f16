"""Packaging and first-hour behaviour: the wheel and sdist build and install, the version has one
source, and a missing optional extra or a bad path gives one clear line instead of a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import labelsmooth

ROOT = Path(__file__).resolve().parents[1]


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)


def test_version_has_one_source():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and not re.search(r"^version\s*=", text, flags=re.M)
    assert re.fullmatch(r"\d+\.\d+\.\d+", labelsmooth.__version__)


def test_cli_version():
    out = run([sys.executable, "-m", "labelsmooth", "--version"])
    assert out.returncode == 0 and out.stdout.strip() == f"labelsmooth {labelsmooth.__version__}"


@pytest.mark.skipif(
    run([sys.executable, "-c", "import build, hatchling"]).returncode != 0,
    reason="needs the build and hatchling packages (requirements-dev.txt)",
)
def test_wheel_and_sdist_build_and_install_in_a_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    built = run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)])
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(dist.glob("labelsmooth-*.whl"))
    sdist = next(dist.glob("labelsmooth-*.tar.gz"))
    assert labelsmooth.__version__ in wheel.name and labelsmooth.__version__ in sdist.name
    names = zipfile.ZipFile(wheel).namelist()
    assert "labelsmooth/__init__.py" in names and "labelsmooth/kernels/triton_ce.py" in names
    # PEP 561 marker: without it in the wheel, type checkers ignore our annotations.
    assert "labelsmooth/py.typed" in names
    assert not any(n.startswith(("tests/", "src/")) for n in names)
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
    assert any(m.endswith("/README.md") for m in members) and any("/src/labelsmooth/" in m for m in members)

    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    inst = run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)]
    )
    assert inst.returncode == 0, inst.stderr[-2000:]
    # torch and numpy come from this environment (a path line, so its editable install is not seen).
    # The fresh venv must import the installed wheel, not a source tree that PYTHONPATH points at.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    site = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    check = run(
        [
            str(py),
            "-c",
            "import labelsmooth, torch; print(labelsmooth.__version__, labelsmooth.__file__); "
            "x = torch.randn(3, 4, requires_grad=True); "
            "labelsmooth.cross_entropy(x, torch.tensor([0, 1, 3]), label_smoothing=0.1).backward()",
        ],
        cwd=tmp_path,
        env=env,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    version, where = check.stdout.split()
    assert version == labelsmooth.__version__ and Path(where).is_relative_to(venv)
    script = venv / "bin" / "labelsmooth"
    assert (
        run([str(script), "--version"], cwd=tmp_path, env=env).stdout.strip()
        == f"labelsmooth {labelsmooth.__version__}"
    )


def test_missing_study_extra_is_one_line_naming_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['rich'] = None; from labelsmooth.cli import main; "
        f"sys.exit(main(['study', '--quick', '--out', {str(tmp_path / 'out')!r}]))"
    )
    out = run([sys.executable, "-c", code])
    assert out.returncode == 1
    assert (
        out.stderr.strip() == "labelsmooth study needs the optional dependency 'rich': pip install 'labelsmooth[study]'"
    )


def test_bad_paths_say_what_is_wrong_with_which_file(tmp_path):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    for out in (a_file, a_file / "sub"):
        proc = run([sys.executable, "-m", "labelsmooth", "study", "--quick", "--out", str(out)])
        assert proc.returncode == 2 and f"argument --out: {str(a_file)!r} is a file, not a folder" in proc.stderr
        assert "Traceback" not in proc.stderr

    text = tmp_path / "x.npz"
    text.write_text("1,2,3\n")
    import numpy as np

    strings = tmp_path / "s.npz"
    np.savez(strings, x=np.array([["a", "b"], ["c", "d"]]), y=np.array([0, 1]))
    from labelsmooth.study.data import DatasetError, read_npz

    with pytest.raises(DatasetError, match=r"x.npz' is not an .npz archive .*starts with b'1,2,'"):
        read_npz(text)
    with pytest.raises(DatasetError, match=r"s.npz'.*x must be a real numeric array, got dtype <U1"):
        read_npz(strings)
    folder = tmp_path / "dir.npz"
    folder.mkdir()
    with pytest.raises(DatasetError, match=r"dir\.npz' is not a file"):
        read_npz(folder)
