"""Where aiter_ext's data lives: the tuned tables (``configs/``), the C++ sources (``csrc/``), the code
objects (``hsa/``), ``gap_matrix.yaml`` and the benchmarks (``op_tests/``).

They sit at the top of the repository. The wheel carries copies inside the package, as
``aiter_ext/_data/...`` (setup.py's build step), so an installed package finds them with
``importlib.resources`` wherever it is run from. The order:

1. ``AITER_EXT_ROOT`` (an override: a checkout, or any folder laid out like one);
2. the package's own ``_data`` folder (a wheel or a non-editable install);
3. the checkout the package sits in (an editable install, or ``PYTHONPATH`` pointing at a checkout).

When none of them holds the data, ``data_path`` raises a ``FileNotFoundError`` that says so and how to
fix it, and the tuned-table lookup warns once (core.tuned) rather than treating every lookup as an
ordinary miss.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

#: The file that marks a data root.
MARKER = "gap_matrix.yaml"


def _package_dir() -> Path:
    return Path(str(importlib.resources.files("aiter_ext")))


def find_data_root() -> Path:
    """The data root by the order above; the package's ``_data`` folder if none holds the marker (then
    ``data_path`` reports what is missing)."""
    override = os.environ.get("AITER_EXT_ROOT")
    if override:
        return Path(override)
    package = _package_dir()
    for candidate in (package / "_data", package.parent):
        if (candidate / MARKER).is_file():
            return candidate
    return package / "_data"


def describe(root: Path) -> str:
    """Which of the three places ``root`` is, for ``aiter-ext info``."""
    if os.environ.get("AITER_EXT_ROOT"):
        return f"{root} (AITER_EXT_ROOT)"
    where = "shipped in the package" if root == _package_dir() / "_data" else "the checkout"
    return f"{root} ({where}{'' if (root / MARKER).is_file() else ', MISSING'})"


def data_path(root: Path, *parts: str, what: str) -> Path:
    """``root / parts``, which must exist; else a FileNotFoundError naming ``what`` and the fix."""
    path = root.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"aiter_ext's {what} is missing: {path} does not exist. The wheel ships it under aiter_ext/_data/; "
            "reinstall aiter-ext, install it from a checkout, or set AITER_EXT_ROOT to a checkout.")
    return path
