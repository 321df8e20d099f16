"""Readers of prediction files for ``labelsmooth evaluate``: one model's outputs on a set of examples.

Nothing is unpickled: ``.npz`` and ``.npy`` files are opened with ``allow_pickle=False``, ``.pt`` files
with ``torch.load(..., weights_only=True)``, CSV is parsed as text and Parquet by pyarrow.

Formats (the scores are logits or probabilities, ``(N, K)`` for K classes or ``(N,)`` for a binary
problem, where they are the logit or the probability of class 1):

* ``.npz`` (``numpy.savez``): an array ``logits``, ``probs`` or ``scores``; ``labels`` (or ``y``);
  optional ``split``.
* a folder of ``.npy`` files: ``logits.npy`` / ``probs.npy`` / ``scores.npy``, ``labels.npy`` (or
  ``y.npy``) and optional ``split.npy``, as ``numpy.save`` or ``numpy.lib.format.open_memmap`` write them.
* ``.pt`` (``torch.save``): a dict of tensors with the same keys (``split`` a bool or integer tensor,
  or a list of ``"val"``/``"test"`` strings).
* ``.csv`` with a header row, and ``.parquet``: a ``label`` column, optional ``split``, and the scores
  as one column per class, ``logit_0`` ... ``logit_{K-1}`` (or ``prob_0`` ..., ``score_0`` ...), or one
  column ``logit`` / ``prob`` / ``score`` for a binary problem. A Parquet file may instead hold the
  scores in one list column ``logits`` / ``probs`` / ``scores`` of K numbers per row.

``split`` marks each row as validation (``"val"``, False, 0), which fits the temperature and nothing
else, or test (``"test"``, True, 1), which is scored; without it every row is a test row.

What streams: scores in ``.npy`` files and in ``.npz`` archives written uncompressed (``numpy.savez``,
not ``savez_compressed``) are memory-mapped, as are ``.pt`` tensors saved by ``torch.save`` (its zip
format) in a dtype numpy has; they keep their stored dtype, so 10 million x 1000 float16 scores are read
from disk chunk by chunk by the evaluation and never become a float32 copy. Compressed ``.npz`` members,
bfloat16 tensors, CSV and Parquet files are read into memory (CSV as float64, Parquet in its column
type). Labels and splits (N values each) are always read into memory.
"""

from __future__ import annotations

import csv
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PredictionFileError", "Predictions", "check_same_examples", "read_predictions"]

#: Names of the scores, in the order they are looked for, and the kind each name states (None: the
#: evaluation detects logits or probabilities from the values).
_SCORE_KEYS: dict[str, str | None] = {"logits": "logits", "probs": "probs", "scores": None}
_LABEL_KEYS = ("labels", "y")
#: CSV/Parquet column stems: ``logit_3`` (per class) or ``logit`` (binary), and the kind they state.
_COLUMN_STEMS: dict[str, str | None] = {"logit": "logits", "prob": "probs", "score": None}
_LABEL_COLUMNS = ("label", "labels", "y")
_SUFFIXES = (".npz", ".pt", ".pth", ".csv", ".parquet", "a folder of .npy files")


class PredictionFileError(ValueError):
    """A prediction file that cannot be evaluated; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Predictions:
    """One model's outputs read from a file.

    Attributes:
        path: the file (or folder of ``.npy`` files) they were read from.
        scores: ``(N, K)`` or ``(N,)`` floating-point logits or probabilities, in the stored dtype; an
            ``np.memmap`` where the format streams.
        labels: ``(N,)`` int64 class indices, checked to lie in ``[0, K)`` (binary: 0 or 1).
        split: ``(N,)`` bool, True for a test row, or None (every row is a test row).
        kind: ``"logits"`` or ``"probs"`` when the key or column names say so, else None.
        source: where the scores were found, in words (``"array 'logits'"``), for messages.
        streamed: whether the scores are memory-mapped from the file rather than held in memory.
    """

    path: Path
    scores: np.ndarray
    labels: np.ndarray
    split: np.ndarray | None
    kind: str | None
    source: str
    streamed: bool = False

    @property
    def n(self) -> int:
        """Number of rows (examples)."""
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """K: the number of score columns, 2 for binary ``(N,)`` scores."""
        return 2 if self.scores.ndim == 1 else int(self.scores.shape[1])


def read_predictions(path: str | os.PathLike[str]) -> Predictions:
    """Read one model's predictions from ``.npz``, ``.pt``, ``.csv``, ``.parquet`` or a folder of ``.npy`` files.

    The formats, their keys and columns, and which of them are memory-mapped are described in this
    module's documentation (and docs/evaluate.md).

    Args:
        path: the file, or a folder holding ``logits.npy`` (or ``probs.npy``/``scores.npy``) and
            ``labels.npy``.

    Returns:
        A :class:`Predictions`.

    Raises:
        PredictionFileError: an unknown extension, a missing, truncated or damaged file, missing keys or
            columns, scores that are not floating point, a shape mismatch between scores and labels,
            labels that are not integers or lie outside ``[0, K)``, split values other than val/test.
            The message is one line and starts with the file's name.

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
        >>> np.savez(path, logits=np.zeros((4, 3), np.float16), labels=[0, 1, 2, 1])
        >>> p = read_predictions(path)
        >>> p.scores.shape, p.scores.dtype, p.kind, p.streamed, p.labels.tolist()
        ((4, 3), dtype('float16'), 'logits', True, [0, 1, 2, 1])
    """
    path = Path(path)
    if not path.exists():
        raise PredictionFileError(f"{path}: no such file")
    if path.is_dir():
        arrays, kind, source = _read_npy_folder(path)
    else:
        suffix = path.suffix.lower()
        if suffix == ".npz":
            arrays, kind, source = _read_npz(path)
        elif suffix in (".pt", ".pth"):
            arrays, kind, source = _read_pt(path)
        elif suffix == ".csv":
            arrays, kind, source = _read_csv(path)
        elif suffix == ".parquet":
            arrays, kind, source = _read_parquet(path)
        else:
            raise PredictionFileError(
                f"{path}: unknown extension {path.suffix or '(none)'!r}; expected one of {', '.join(_SUFFIXES)}"
            )
    return _assemble(path, arrays, kind, source)


def check_same_examples(preds: Sequence[Predictions]) -> None:
    """Check that prediction files list the same examples in the same order, as paired comparison needs.

    The examples themselves are not in the files; equal row counts, equal labels row for row and the
    same split are what can be checked, and a reordered file almost always shows up as a label mismatch.

    Raises:
        PredictionFileError: naming the later file, the first one, and the first row that differs.
    """
    if not preds:
        return
    first = preds[0]
    for other in preds[1:]:
        where = f"{other.path}: does not list the same examples as {first.path}"
        if other.n != first.n:
            raise PredictionFileError(f"{where}: it has {other.n} rows, {first.path} has {first.n}")
        if other.num_classes != first.num_classes:
            raise PredictionFileError(
                f"{where}: its scores have {other.num_classes} classes, {first.path}'s have {first.num_classes}"
            )
        diff = np.flatnonzero(other.labels != first.labels)
        if diff.size:
            i = int(diff[0])
            raise PredictionFileError(
                f"{where} in the same order: the first label mismatch is at row {_row(other.path, i)} "
                f"(label {int(other.labels[i])} here, {int(first.labels[i])} there; {diff.size} rows differ)"
            )
        a = np.ones(first.n, bool) if first.split is None else first.split
        b = np.ones(other.n, bool) if other.split is None else other.split
        diff = np.flatnonzero(a != b)
        if diff.size:
            i = int(diff[0])
            raise PredictionFileError(
                f"{where}: the split differs first at row {_row(other.path, i)} "
                f"({_split_word(b[i])} vs {_split_word(a[i])})"
            )


# ----------------------------------------------------------------------------- assembling and checks


def _row(path: Path, i: int) -> str:
    # Rows count from 0 (array indices); in a CSV file the line number helps find it in an editor.
    return f"{i} (line {i + 2})" if path.suffix.lower() == ".csv" else str(i)


def _split_word(is_test: bool) -> str:
    return "test" if is_test else "val"


def _assemble(path: Path, arrays: dict[str, Any], kind: str | None, source: str) -> Predictions:
    scores = arrays["scores"]
    if scores.dtype.kind != "f":
        raise PredictionFileError(f"{path}: {source} must hold floating-point scores, got dtype {scores.dtype}")
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores.reshape(-1)  # (N, 1): one binary score per row; a view, so a memmap stays one
    if scores.ndim not in (1, 2):
        raise PredictionFileError(
            f"{path}: {source} must be (N, K) scores or (N,) binary scores, got shape {scores.shape}"
        )
    if scores.ndim == 2 and scores.shape[1] < 2:
        raise PredictionFileError(f"{path}: {source} has shape {scores.shape}; K must be at least 2")
    labels = _as_labels(path, arrays["labels"])
    if labels.shape[0] != scores.shape[0]:
        raise PredictionFileError(
            f"{path}: shape mismatch: {source} has {scores.shape[0]} rows (shape {scores.shape}) "
            f"but the labels have {labels.shape[0]}"
        )
    if labels.shape[0] == 0:
        raise PredictionFileError(f"{path}: holds no rows")
    k = 2 if scores.ndim == 1 else scores.shape[1]
    bad = np.flatnonzero((labels < 0) | (labels >= k))
    if bad.size:
        i = int(bad[0])
        what = "binary scores (N,) take labels 0 and 1" if scores.ndim == 1 else f"{k} score columns"
        raise PredictionFileError(
            f"{path}: label {int(labels[i])} at row {_row(path, i)} is out of range [0, {k}) ({what}; "
            f"{bad.size} labels out of range)"
        )
    split = arrays.get("split")
    if split is not None:
        split = _as_split(path, split)
        if split.shape[0] != labels.shape[0]:
            raise PredictionFileError(
                f"{path}: shape mismatch: split has {split.shape[0]} values but the labels have {labels.shape[0]}"
            )
        if not split.any():
            raise PredictionFileError(f"{path}: split marks no row as test; nothing would be scored")
    mapped = isinstance(scores, np.memmap) or bool(arrays.get("mapped"))
    return Predictions(path, scores, labels, split, kind, source, streamed=mapped)


def _as_labels(path: Path, values: Any) -> np.ndarray:
    y: np.ndarray = np.asarray(values)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise PredictionFileError(f"{path}: labels must be one class index per row, got shape {y.shape}")
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        # Labels saved as floats (a pandas or torch habit) are accepted when every one is a whole number.
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if bad.size:
            i = int(bad[0])
            raise PredictionFileError(
                f"{path}: labels must be integers (class indices); row {_row(path, i)} holds {float(y[i]):g}"
            )
        return y.astype(np.int64)
    raise PredictionFileError(f"{path}: labels must be integers (class indices), got dtype {y.dtype}")


def _as_split(path: Path, split: Any) -> np.ndarray:
    s: np.ndarray = np.asarray(split)
    if s.ndim != 1:
        raise PredictionFileError(f"{path}: split must be one value per row, got shape {s.shape}")
    if s.dtype.kind == "b":
        return s.astype(bool)
    if s.dtype.kind in "iu":
        bad = np.flatnonzero((s != 0) & (s != 1))
        if bad.size:
            i = int(bad[0])
            raise PredictionFileError(
                f"{path}: split values must be 'val'/'test', False/True or 0/1; row {_row(path, i)} holds {s[i]}"
            )
        return np.asarray(s == 1)
    if s.dtype.kind in "US":
        text = np.char.strip(s.astype(str))
        bad = np.flatnonzero((text != "val") & (text != "test"))
        if bad.size:
            i = int(bad[0])
            raise PredictionFileError(
                f"{path}: split values must be 'val' or 'test'; row {_row(path, i)} holds {str(text[i])!r}"
            )
        return np.asarray(text == "test")
    raise PredictionFileError(f"{path}: split must hold 'val'/'test' strings, bools or 0/1, got dtype {s.dtype}")


def _pick(path: Path, names: Sequence[str], found: Sequence[str], what: str) -> str | None:
    present = [n for n in names if n in found]
    if len(present) > 1:
        raise PredictionFileError(f"{path}: holds both {present[0]!r} and {present[1]!r}; keep one {what}")
    return present[0] if present else None


def _keys(path: Path, found: Sequence[str], noun: str) -> tuple[str, str, str | None]:
    """The scores and labels keys among ``found`` (array names), or a one-line error listing what is there."""
    score = _pick(path, list(_SCORE_KEYS), found, "array of scores")
    label = _pick(path, _LABEL_KEYS, found, "array of labels")
    missing = []
    if score is None:
        missing.append(f"scores ({' or '.join(repr(k) for k in _SCORE_KEYS)})")
    if label is None:
        missing.append(f"labels ({' or '.join(repr(k) for k in _LABEL_KEYS)})")
    if missing:
        raise PredictionFileError(f"{path}: missing {' and '.join(missing)}; found {noun} {sorted(found) or 'none'}")
    assert score is not None and label is not None
    return score, label, _SCORE_KEYS[score]


# ----------------------------------------------------------------------------- numpy: .npz and .npy folders


def _read_npz(path: Path) -> tuple[dict[str, Any], str | None, str]:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as err:
        raise PredictionFileError(f"{path}: cannot be read: {err.strerror or err}") from err
    if magic[:2] != b"PK":  # an .npz is a zip of .npy files; anything else is not one (and may be a pickle)
        raise PredictionFileError(f"{path}: not an .npz archive (a zip of .npy arrays written by numpy.savez)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {i.filename[: -len(".npy")]: i for i in archive.infolist() if i.filename.endswith(".npy")}
            score, label, kind = _keys(path, list(members), "arrays")
            wanted = [score, label] + (["split"] if "split" in members else [])
            arrays = {
                role: _npz_member(path, archive, members[key])
                for role, key in zip(("scores", "labels", "split"), wanted, strict=False)
            }
    except (zipfile.BadZipFile, zlib.error, EOFError, struct.error) as err:
        raise PredictionFileError(f"{path}: not a readable .npz archive (truncated or damaged?): {err}") from err
    except OSError as err:
        raise PredictionFileError(f"{path}: cannot be read: {err.strerror or err}") from err
    return arrays, kind, f"array {score!r}"


def _npz_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One array of an ``.npz``: memory-mapped when stored uncompressed, else read (and checked) whole."""
    name = info.filename[: -len(".npy")]
    with archive.open(info) as member:
        dtype, shape, fortran, header_len = _npy_header(path, member, name)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if info.compress_type == zipfile.ZIP_STORED and nbytes > 0:
        if info.file_size < header_len + nbytes:
            raise PredictionFileError(
                f"{path}: array {name!r} is truncated: its header promises {nbytes} bytes of data "
                f"({shape} {dtype}) but the member holds {info.file_size - header_len}"
            )
        # The member's bytes start after its local header, whose extra field may differ from the
        # central directory's: read its lengths from the local header itself.
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise PredictionFileError(f"{path}: not a readable .npz archive (truncated or damaged?)")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
        offset = info.header_offset + 30 + name_len + extra_len + header_len
        if offset + nbytes > path.stat().st_size:
            raise PredictionFileError(f"{path}: array {name!r} is truncated (the file ends inside it)")
        # Copy-on-write ("c"): pages are read from the file on demand and nothing is ever written back, but
        # the array counts as writable, which torch.from_numpy wants (it warns on read-only arrays).
        return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape, order="F" if fortran else "C")
    try:
        with archive.open(info) as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    except ValueError as err:
        raise PredictionFileError(f"{path}: array {name!r} cannot be read: {err}") from err


def _npy_header(path: Path, fh: Any, name: str) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    start = fh.tell()
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    except (ValueError, EOFError) as err:
        raise PredictionFileError(f"{path}: array {name!r} is not a readable .npy array: {err}") from err
    if dtype.hasobject:
        raise PredictionFileError(
            f"{path}: array {name!r} holds Python objects, which cannot be read without unpickling (refused)"
        )
    return dtype, tuple(shape), bool(fortran), fh.tell() - start


def _read_npy_folder(path: Path) -> tuple[dict[str, Any], str | None, str]:
    found = [p.stem for p in path.glob("*.npy") if p.is_file()]
    score, label, kind = _keys(path, found, ".npy files")
    arrays = {"scores": _load_npy(path / f"{score}.npy"), "labels": np.asarray(_load_npy(path / f"{label}.npy"))}
    if "split" in found:
        arrays["split"] = np.asarray(_load_npy(path / "split.npy"))
    return arrays, kind, f"{score}.npy"


def _load_npy(file: Path) -> np.ndarray:
    try:
        with open(file, "rb") as fh:
            dtype, shape, _, header_len = _npy_header(file, fh, file.stem)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if file.stat().st_size < header_len + nbytes:
            raise PredictionFileError(f"{file}: truncated: the file ends inside its {shape} {dtype} array")
        loaded: np.ndarray = np.load(file, mmap_mode="c" if nbytes else None, allow_pickle=False)
        return loaded
    except OSError as err:
        raise PredictionFileError(f"{file}: cannot be read: {err.strerror or err}") from err
    except ValueError as err:
        if isinstance(err, PredictionFileError):
            raise
        raise PredictionFileError(f"{file}: not a readable .npy array: {err}") from err


# ----------------------------------------------------------------------------- torch: .pt


def _read_pt(path: Path) -> tuple[dict[str, Any], str | None, str]:
    import pickle

    import torch

    def load(mmap: bool) -> Any:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        mapped = True
        try:
            obj = load(mmap=True)  # torch.save's zip format: tensors map the file instead of being read
        except RuntimeError as err:
            if "mmap" not in str(err):  # a legacy (non-zip) file cannot be mapped; anything else is damage
                raise
            obj, mapped = load(mmap=False), False
    except pickle.UnpicklingError as err:
        m = re.search(r"(Unsupported global[^\n]*|Unsupported operand[^\n]*)", str(err))
        first = m.group(1).split(". ")[0].strip() if m else "weights_only=True refused it"
        raise PredictionFileError(
            f"{path}: holds something other than tensors, lists and strings, which is not unpickled "
            f"(weights_only=True): {first}"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        # torch's messages run to several sentences of advice; the first says what failed
        first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise PredictionFileError(f"{path}: not a readable torch.save file (truncated or damaged?): {first}") from err
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise PredictionFileError(
            f"{path}: must hold a dict of tensors (logits or probs, labels, optional split), got {type(obj).__name__}"
        )
    score, label, kind = _keys(path, list(obj), "keys")
    arrays: dict[str, Any] = {
        "scores": _tensor_to_numpy(path, score, obj[score]),
        "labels": _tensor_to_numpy(path, label, obj[label]),
    }
    # bfloat16 scores were converted to a float32 copy; others share the mapped storage
    arrays["mapped"] = bool(mapped and obj[score].dtype != torch.bfloat16)
    if "split" in obj:
        split = obj["split"]
        if isinstance(split, (list, tuple)):
            arrays["split"] = np.asarray([str(s) for s in split])
        else:
            arrays["split"] = _tensor_to_numpy(path, "split", split)
    return arrays, kind, f"tensor {score!r}"


def _tensor_to_numpy(path: Path, key: str, value: Any) -> np.ndarray:
    import torch

    if not isinstance(value, torch.Tensor):
        raise PredictionFileError(f"{path}: {key!r} must be a tensor, got {type(value).__name__}")
    if value.dtype == torch.bfloat16:  # numpy has no bfloat16: this one is converted (in memory)
        value = value.float()
    if value.is_complex():
        raise PredictionFileError(f"{path}: {key!r} must be real, got dtype {value.dtype}")
    out: np.ndarray = value.detach().numpy()  # shares the (possibly memory-mapped) storage
    return out


# ----------------------------------------------------------------------------- tables: .csv and .parquet


def _columns(path: Path, names: Sequence[str], list_columns: Sequence[str] = ()) -> tuple[list[str], str, str | None]:
    """Resolve the score columns, the label column and the kind from a table's column names.

    Returns ``(score_columns, label_column, kind)``; ``score_columns`` is one name for a binary or
    list column, else K names in class order.
    """
    label = _pick(path, _LABEL_COLUMNS, names, "label column")
    per_class: dict[str, dict[int, str]] = {}
    for name in names:
        m = re.fullmatch(r"(logit|prob|score)_(\d+)", name)
        if m:
            per_class.setdefault(m.group(1), {})[int(m.group(2))] = name
    single = [s for s in _COLUMN_STEMS if s in names]
    lists = [c for c in list_columns if c in _SCORE_KEYS]
    options = [f"{s}_0..{s}_K-1" for s in per_class] + single + lists
    if len(options) > 1:
        raise PredictionFileError(f"{path}: has score columns of more than one kind ({', '.join(options)}); keep one")
    if label is None or not options:
        missing = []
        if not options:
            missing.append("score columns (logit_0..logit_{K-1}, prob_0..prob_{K-1}, or logit/prob for binary)")
        if label is None:
            missing.append("a 'label' column")
        shown = list(names)[:12]
        more = f" and {len(names) - 12} more" if len(names) > 12 else ""
        raise PredictionFileError(f"{path}: missing {' and '.join(missing)}; found columns {shown}{more}")
    if per_class:
        stem, cols = next(iter(per_class.items()))
        k = max(cols) + 1
        gaps = [i for i in range(k) if i not in cols]
        if gaps:
            raise PredictionFileError(
                f"{path}: score columns {stem}_0..{stem}_{k - 1} lack {', '.join(f'{stem}_{i}' for i in gaps[:5])}"
            )
        if k < 2:
            raise PredictionFileError(
                f"{path}: one score column {stem}_0; a binary problem's single score column is named {stem!r}"
            )
        return [cols[i] for i in range(k)], label, _COLUMN_STEMS[stem]
    if single:
        return [single[0]], label, _COLUMN_STEMS[single[0]]
    return [lists[0]], label, _SCORE_KEYS[lists[0]]


def _read_csv(path: Path) -> tuple[dict[str, Any], str | None, str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise PredictionFileError(f"{path}: empty file (expected a header row and one row per example)")
            header = [h.strip() for h in header]
            cols, label, kind = _columns(path, header)
            rows = []
            for line, row in enumerate(reader, start=2):
                if len(row) != len(header):
                    if not row:  # a blank line (e.g. at the end)
                        continue
                    raise PredictionFileError(
                        f"{path}: line {line} has {len(row)} fields, the header has {len(header)} (truncated file?)"
                    )
                rows.append(row)
    except UnicodeDecodeError as err:
        raise PredictionFileError(f"{path}: not a UTF-8 text CSV file: {err.reason} at byte {err.start}") from err
    except csv.Error as err:
        raise PredictionFileError(f"{path}: not a readable CSV file: {err}") from err
    except OSError as err:
        raise PredictionFileError(f"{path}: cannot be read: {err.strerror or err}") from err
    table = np.array(rows, dtype=str).reshape(len(rows), len(header))
    index = {name: i for i, name in enumerate(header)}

    def numbers(names: Sequence[str]) -> np.ndarray:
        cells = table[:, [index[n] for n in names]]
        try:
            return np.char.strip(cells).astype(np.float64)
        except ValueError:  # find the first cell that is not a number, for the message
            for r in range(cells.shape[0]):
                for c, name in enumerate(names):
                    try:
                        float(cells[r, c])
                    except ValueError:
                        raise PredictionFileError(
                            f"{path}: line {r + 2}, column {name!r}: {str(cells[r, c])!r} is not a number"
                        ) from None
            raise

    scores = numbers(cols)
    arrays: dict[str, Any] = {"scores": scores[:, 0] if len(cols) == 1 else scores}
    arrays["labels"] = numbers([label])[:, 0]
    if "split" in index:
        arrays["split"] = table[:, index["split"]]
    return arrays, kind, _describe_columns(cols)


def _describe_columns(cols: Sequence[str]) -> str:
    return f"column {cols[0]!r}" if len(cols) == 1 else f"columns {cols[0]!r}..{cols[-1]!r}"


def _read_parquet(path: Path) -> tuple[dict[str, Any], str | None, str]:
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise PredictionFileError(
            f"{path}: reading Parquet files needs pyarrow: pip install pyarrow (or pip install 'labelsmooth[parquet]')"
        ) from None
    try:
        pf = pq.ParquetFile(path)
        names = list(pf.schema_arrow.names)
        list_cols = [
            n for n in names if pa.types.is_list(t := pf.schema_arrow.field(n).type) or pa.types.is_fixed_size_list(t)
        ]
        cols, label, kind = _columns(path, names, list_cols)
        wanted = [*cols, label] + (["split"] if "split" in names else [])
        table = pf.read(columns=wanted)
    except (pa.ArrowException, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PredictionFileError(f"{path}: not a readable Parquet file (truncated or damaged?): {first}") from err

    def column(name: str) -> np.ndarray:
        col = table.column(name)
        if col.null_count:
            i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise PredictionFileError(f"{path}: column {name!r} has a missing value at row {i}")
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            return np.asarray(col.to_pylist(), dtype=str)  # numpy's own strings, not an object array
        return np.asarray(col.to_numpy())

    if cols[0] in list_cols:
        col = table.column(cols[0]).combine_chunks()
        if col.null_count:
            raise PredictionFileError(f"{path}: column {cols[0]!r} has missing rows")
        lengths = np.asarray(pc.list_value_length(col).to_numpy(zero_copy_only=False))
        k = int(lengths[0]) if lengths.size else 0
        bad = np.flatnonzero(lengths != k)
        if bad.size:
            i = int(bad[0])
            raise PredictionFileError(
                f"{path}: column {cols[0]!r} holds {k} scores in row 0 but {int(lengths[i])} in row {i}"
            )
        flat = col.flatten()
        if flat.null_count:
            raise PredictionFileError(f"{path}: column {cols[0]!r} has missing scores")
        scores = np.asarray(flat.to_numpy(zero_copy_only=False)).reshape(len(col), k)
    elif len(cols) == 1:
        scores = column(cols[0])
    else:
        parts = [column(c) for c in cols]
        scores = np.empty((table.num_rows, len(cols)), dtype=np.result_type(*parts))
        for i, p in enumerate(parts):
            scores[:, i] = p
    arrays: dict[str, Any] = {"scores": scores, "labels": column(label)}
    if "split" in names:
        arrays["split"] = column("split")
    return arrays, kind, _describe_columns(cols)
