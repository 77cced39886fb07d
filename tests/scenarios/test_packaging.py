"""What `pip install .` puts in site-packages: mtlrec alone (the offline jobs as mtlrec.pipelines)."""

import os
import shutil
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_wheel_installs_nothing_but_mtlrec(tmp_path):
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ there
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("setup.py", "pyproject.toml", "README.md", "mtlrec", "pipelines"):
        path = os.path.join(REPO, name)
        if os.path.isdir(path):
            shutil.copytree(path, src / name, ignore=skip)
        else:
            shutil.copy(path, src / name)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"mtlrec", "mtlrec-0.1.0.dist-info"}, tops
    for module in ("parse", "prepare", "synthetic"):  # the top-level pipelines/ folder, under mtlrec
        assert f"mtlrec/pipelines/{module}.py" in names
    assert "mtlrec/training/job.py" in names and "mtlrec/training.py" not in names


def test_pipelines_import_only_under_mtlrec(tmp_path):
    code = "import importlib.util as u; print(u.find_spec('pipelines'), u.find_spec('mtlrec.pipelines') is not None)"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["None", "True"], res.stdout + res.stderr
