"""A wheel of the dspy-serve that is running, for an image to install.

dspy-serve is not on PyPI: an image cannot ``pip install dspy-serve``. Whatever way it was
installed here (a path, a git URL, a wheel, editable), its package files and its metadata are
on this machine, and a wheel is a zip of exactly those. The zip is reproducible (fixed times,
sorted entries), so writing it again changes nothing when the code did not change.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import dspy_serve
from dspy_serve._version import VERSION

__all__ = ["wheel_name", "write_wheel"]

_WHEEL = "Wheel-Version: 1.0\nGenerator: dspy-serve\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
_EPOCH = (1980, 1, 1, 0, 0, 0)


def wheel_name() -> str:
    return f"dspy_serve-{VERSION}-py3-none-any.whl"


def _package_files() -> dict[str, bytes]:
    package = Path(dspy_serve.__file__).parent
    return {
        f"dspy_serve/{path.relative_to(package).as_posix()}": path.read_bytes()
        for path in sorted(package.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")
    }


def _metadata_files() -> dict[str, str]:
    try:
        dist = distribution("dspy-serve")
    except PackageNotFoundError:
        raise ValueError(
            "dspy-serve's metadata is not installed: install it (pip install PATH-TO-dspy-serve)"
        ) from None
    metadata = dist.read_text("METADATA")
    if metadata is None:
        raise ValueError("dspy-serve's installed metadata has no METADATA file: reinstall it")
    files = {"METADATA": metadata, "WHEEL": _WHEEL}
    if entry_points := dist.read_text("entry_points.txt"):
        files["entry_points.txt"] = entry_points
    return files


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(out: Path) -> Path:
    """Write ``dspy_serve-VERSION-py3-none-any.whl`` into ``out``."""
    dist_info = f"dspy_serve-{VERSION}.dist-info"
    entries = _package_files()
    entries.update({f"{dist_info}/{name}": text.encode() for name, text in _metadata_files().items()})
    record = [_record_line(name, data) for name, data in entries.items()] + [f"{dist_info}/RECORD,,"]
    entries[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = out / wheel_name()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return path
