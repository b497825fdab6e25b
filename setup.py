"""Build step of the wheel: copy the repository's data folders into the package, as aiter_ext/_data/.

Everything else is in pyproject.toml. A wheel is what serving images install, so the tuned tables,
C++ sources, code objects, benchmarks and the feature matrix travel inside it (core/data.py finds
them). Editable installs skip the copy: they read the checkout itself.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: The data the package reads at run time (core/data.py), relative to the repository root.
DATA = ("gap_matrix.yaml", "configs", "csrc", "hsa", "op_tests")


class BuildPyWithData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        target = Path(self.build_lib) / "aiter_ext" / "_data"
        target.mkdir(parents=True, exist_ok=True)
        for name in DATA:
            source = root / name
            if not source.exists():
                raise FileNotFoundError(f"setup.py: {source} is missing; the wheel must carry it")
            if source.is_dir():
                shutil.copytree(source, target / name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
            else:
                shutil.copy2(source, target / name)


setup(cmdclass={"build_py": BuildPyWithData})
