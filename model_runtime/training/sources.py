"""Reading the training data: plain text or JSON lines, from a file or a directory, streamed.

Nothing here holds the dataset in memory: text is read in chunks that end at a line boundary, JSON
lines one record at a time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from model_runtime.training.config import DataSpec
from model_runtime.training.exitcodes import DataError

CHUNK_CHARS = 1 << 20


def list_files(spec: DataSpec) -> list[Path]:
    """The data files: ``data.path`` itself, or every non-hidden file under it in sorted order."""
    root = Path(spec.path)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(
            p for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    else:
        raise DataError(f"data.path: {spec.path} does not exist (is the data volume mounted?)")
    if not files:
        raise DataError(f"data.path: {spec.path} contains no files")
    if all(p.stat().st_size == 0 for p in files):
        raise DataError(f"data.path: {spec.path} is empty")
    return files


def dataset_digest(spec: DataSpec, files: list[Path]) -> str:
    """sha256 over the files' names (relative to data.path) and contents, in order."""
    root = Path(spec.path)
    digest = hashlib.sha256()
    for file in files:
        name = file.name if file == root else str(file.relative_to(root))
        digest.update(f"{name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def iter_pieces(spec: DataSpec, files: list[Path]) -> Iterator[tuple[str, bool]]:
    """Yields ``(text, ends_document)``. A text file is one document; a JSON line is one document."""
    for file in files:
        try:
            if spec.format == "text":
                yield from _text_pieces(file)
            else:
                yield from _jsonl_pieces(file, spec.field)
        except UnicodeDecodeError:
            raise DataError(f"data.path: {file} is not UTF-8 text") from None


def _text_pieces(file: Path) -> Iterator[tuple[str, bool]]:
    with open(file, encoding="utf-8", newline="") as f:
        while chunk := f.read(CHUNK_CHARS):
            chunk += f.readline()  # end at a line boundary
            yield chunk, False
    yield "", True


def _jsonl_pieces(file: Path, field: str) -> Iterator[tuple[str, bool]]:
    with open(file, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"data.path: {file}:{number}: invalid JSON ({error.msg})") from None
            text = record.get(field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise DataError(f"data.field: {file}:{number}: no string field {field!r}")
            yield text, True
