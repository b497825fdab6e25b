"""Tuned-CSV dispatch tables: ``configs/tuned_csv/<op>_tuned.csv``.

One schema for every op::

    arch, cu_num, <the op's shape keys>, backend, config, us, bw_gbs, tflops, err

``config`` is a small JSON object of kernel parameters. Rows are written by the tuner
(``aiter-ext tune <op>``) from measurements, never by hand.

Lookup for a call on this device, each step down logged once per (op, step, shape) and counted in
:data:`STATS` (AITER misses silently across CU counts; we say so):

1. the exact row (same arch, CU count and shape keys);
2. the nearest shape on the same arch and CU count (non-numeric keys such as dtype must match;
   numeric keys are compared on a log2 scale, since sizes matter by ratio);
3. the same arch at the nearest CU count (exact shape, else nearest shape there);
4. nothing: the caller falls back to the backend priority order and the kernel's heuristic config.

The path can be overridden per op with ``AITER_EXT_TUNED_CSV_<OP>`` (tests use this).
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .arch import REPO_ROOT, device_info
from .log import log_once

TUNED_DIR = REPO_ROOT / "configs" / "tuned_csv"
ARCH_COLUMNS = ("arch", "cu_num")
RESULT_COLUMNS = ("backend", "config", "us", "bw_gbs", "tflops", "err")

#: How often each lookup step was taken, keyed ``(op, step)``: exact, nearest_shape, nearest_cu, miss.
STATS: Counter = Counter()


@dataclass(frozen=True)
class TunedRow:
    backend: str
    config: dict
    us: float
    source: str  # how it was found: "exact", "nearest shape ...", "cu_num ... (nearest)"


def tuned_csv_path(op: str) -> Path:
    override = os.environ.get(f"AITER_EXT_TUNED_CSV_{op.upper()}")
    return Path(override) if override else TUNED_DIR / f"{op}_tuned.csv"


def untuned_csv_path(op: str) -> Path:
    return TUNED_DIR / f"{op}_untuned.csv"


def header(shape_keys: Iterable[str]) -> list[str]:
    return [*ARCH_COLUMNS, *shape_keys, *RESULT_COLUMNS]


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


@functools.lru_cache(maxsize=None)
def _load(path: str, mtime: float) -> tuple[dict, ...]:
    with open(path, newline="") as f:
        return tuple({k: _parse_value(v) for k, v in row.items()} for row in csv.DictReader(f))


def load_rows(op: str) -> tuple[dict, ...]:
    path = tuned_csv_path(op)
    if not path.exists():
        if not TUNED_DIR.is_dir():  # not an op without a table: the tables themselves are missing
            log_once(("no tuned dir",), f"aiter_ext's tuned tables are missing: {TUNED_DIR} does not exist, so "
                     "every op falls back to its default heuristics. The wheel ships them under aiter_ext/_data/; "
                     "reinstall aiter-ext or set AITER_EXT_ROOT to a checkout.", level=30)
        return ()
    return _load(str(path), path.stat().st_mtime)


def measured_configs(op: str, arch: str, backend: str = "triton") -> list[tuple[dict, dict]]:
    """``(row, its config parsed)`` of every row of ``op``'s tuned CSV measured on ``arch`` for ``backend``: the
    tiles an op's ``aot_specs(arch)`` add to its defaults (a tuned tile needs its code object as much as a
    default does). A config of ``{}`` is the heuristic's own tile."""
    return [(row, json.loads(row["config"])) for row in load_rows(op)
            if row["arch"] == arch and row["backend"] == backend]


def _shape_distance(row: Mapping, call: Mapping, shape_keys, exact_keys=()) -> float:
    """log2-scale distance between two shapes; inf when a non-numeric key or one of ``exact_keys`` differs."""
    total = 0.0
    for key in shape_keys:
        a, b = row[key], call[key]
        if key in exact_keys:
            if str(a) != str(b):
                return math.inf
        elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
            total += abs(math.log2(max(a, 1)) - math.log2(max(b, 1)))
        elif str(a) != str(b):
            return math.inf
    return total


def _best_in(rows, call, shape_keys, exact_keys=()) -> tuple[dict | None, float]:
    best, best_d = None, math.inf
    for row in rows:
        d = _shape_distance(row, call, shape_keys, exact_keys)
        if d < best_d:
            best, best_d = row, d
    return best, best_d


def _shape_label(call: Mapping, shape_keys) -> str:
    return ",".join(f"{k}={call[k]}" for k in shape_keys)


def _note(op: str, step: str, call, shape_keys, message: str) -> None:
    STATS[(op, step)] += 1
    log_once(("tuned", op, step, _shape_label(call, shape_keys)), f"{op} tuned CSV: {message}")


def lookup(op: str, call: Mapping[str, Any], shape_keys: tuple[str, ...], exact_keys: tuple[str, ...] = ()
           ) -> TunedRow | None:
    """The tuned row for ``call`` on this device, following the fallbacks above; None on a miss. A row
    serves another shape only where every one of ``exact_keys`` is equal (an op whose tiles are sized for
    one row width, say, lists it there: a tile tuned at 128 wide must not serve a 16384-wide call)."""
    info = device_info()
    rows = [r for r in load_rows(op) if str(r["arch"]) == info.arch]
    label = _shape_label(call, shape_keys)
    if not rows:
        _note(op, "miss", call, shape_keys, f"no row for arch {info.arch}; using the default heuristic")
        return None
    same_cu = [r for r in rows if int(r["cu_num"]) == info.cu_num]
    cu_note = ""
    if not same_cu:
        nearest_cu = min({int(r["cu_num"]) for r in rows}, key=lambda c: (abs(c - info.cu_num), -c))
        same_cu = [r for r in rows if int(r["cu_num"]) == nearest_cu]
        cu_note = f"cu_num {nearest_cu} (nearest to this device's {info.cu_num})"
    row, dist = _best_in(same_cu, call, shape_keys, exact_keys)
    if row is None:
        _note(op, "miss", call, shape_keys, f"no row with matching keys for {label}; using the default heuristic")
        return None
    if dist == 0 and not cu_note:
        STATS[(op, "exact")] += 1
        source = "exact"
    else:
        shape_note = "" if dist == 0 else f"nearest shape {_shape_label(row, shape_keys)}"
        source = "; ".join(s for s in (cu_note, shape_note) if s)
        _note(op, "nearest_cu" if cu_note else "nearest_shape", call, shape_keys,
              f"{label}: no exact row, using {source}")
    return TunedRow(str(row["backend"]), json.loads(row["config"] or "{}"), float(row["us"]), source)


def _sort_key(key: tuple[str, ...]) -> tuple:
    """Numbers sort as numbers, strings as strings (so 64 < 128 and rows read in shape order)."""
    return tuple((1, v) if isinstance(v, str) else (0, v) for v in map(_parse_value, key))


def write_rows(op: str, shape_keys: tuple[str, ...], new_rows: list[dict], path: Path | None = None) -> Path:
    """Merge measured rows into the tuned CSV: a new row replaces one with the same arch, CU and shape."""
    path = path or tuned_csv_path(op)
    cols = header(shape_keys)
    key_cols = [*ARCH_COLUMNS, *shape_keys]
    merged = {}
    if path.exists():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                merged[tuple(str(row[k]) for k in key_cols)] = row
    for row in new_rows:
        merged[tuple(str(row[k]) for k in key_cols)] = {k: row[k] for k in cols}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        for key in sorted(merged, key=_sort_key):
            writer.writerow(merged[key])
    os.replace(tmp, path)
    return path
