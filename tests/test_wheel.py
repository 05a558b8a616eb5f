"""The wheel a user installs holds every module and data file of the checkout.

`packages` in pyproject.toml is an explicit list (the folders map onto the ``ccrl`` namespace
through ``package-dir``), so a subpackage missing from it still imports in an editable checkout
and only breaks a user's install. This builds the real wheel (not editable), unpacks it as pip
installs it, and imports every first-party module from there, with the editable install's path
hooks out of the way (``python -S``: no ``.pth`` files).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from first_party import FOLDERS, ROOT, checkout_modules

pytestmark = pytest.mark.slow

# Files that are not code but ship with the package (pyproject.toml's package-data).
DATA_SUFFIXES = (".jinja", ".yaml", ".json", ".jsonl", ".tar.xz")


def checkout_data_files() -> list[str]:
    """Every tracked data file under the code folders, by its path inside the wheel."""
    out = subprocess.run(["git", "ls-files", *FOLDERS], cwd=ROOT, capture_output=True, text=True, check=True)
    files = []
    for line in out.stdout.splitlines():
        if line.endswith(DATA_SUFFIXES):
            folder, _, rest = line.partition("/")
            files.append("/".join((*FOLDERS[folder].split("."), rest)))
    return files


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a clean copy of the checkout and unpacked into a folder of its own.

    A copy, because setuptools reuses the checkout's ``build/lib``: a module a previous build put
    there would ship even when pyproject.toml no longer lists its package."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(source)],
                   check=True, capture_output=True, text=True)
    wheels = list((work / "dist").glob("ccrl-*.whl"))
    assert len(wheels) == 1, wheels
    target = work / "site"
    with zipfile.ZipFile(wheels[0]) as archive:
        archive.extractall(target)
    return target


def test_the_wheel_holds_every_module_and_data_file(installed: Path) -> None:
    modules = list(checkout_modules())
    assert "ccrl.agent.cli" in modules and "ccrl.hooks.capture" in modules  # the walk found the tree
    missing = [name for name in modules
               if not (installed / Path(*name.split(".")) ).with_suffix(".py").exists()
               and not (installed / Path(*name.split(".")) / "__init__.py").exists()]
    assert missing == []
    data = checkout_data_files()
    assert any(name.endswith(".jinja") for name in data) and any(name.endswith(".tar.xz") for name in data)
    assert [name for name in data if not (installed / name).exists()] == []


def test_every_module_imports_from_the_installed_wheel(installed: Path) -> None:
    modules = list(checkout_modules())
    # -S: site is not imported, so the editable install's .pth finder never loads; the
    # environment's packages (the dependencies) come after the wheel's folder on sys.path.
    script = (
        "import importlib, sys\n"
        f"sys.path[:0] = [{str(installed)!r}, {sysconfig.get_paths()['purelib']!r}]\n"
        "bad = []\n"
        "for name in sys.argv[1:]:\n"
        "    module = importlib.import_module(name)\n"
        f"    if not (module.__file__ or '').startswith({str(installed)!r}):\n"
        "        bad.append((name, module.__file__))\n"
        "print(len(sys.argv) - 1, bad)\n"
    )
    result = subprocess.run([sys.executable, "-S", "-c", script, *modules], capture_output=True, text=True,
                            cwd=installed)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{len(modules)} []"
