"""Where downloaded data sets are kept, and how a file gets there (shared by the loaders)."""

from __future__ import annotations

import os
import tempfile
import urllib.request
from pathlib import Path

_USER_AGENT = "Mozilla/5.0 (compatible; hycnn_sc dataset loader)"
_TIMEOUT_S = 60.0
_CHUNK_BYTES = 1 << 20


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None, subdir: str) -> Path:
    """``cache_dir`` (default ``scanpy.settings.datasetdir / subdir``), created if needed."""
    if cache_dir is None:
        import scanpy as sc

        directory = Path(sc.settings.datasetdir) / subdir
    else:
        directory = Path(cache_dir)
    directory = directory.expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def download(url: str, destination: Path, *, progress: bool = True) -> None:
    """Download ``url`` (``https://``, ``ftp://`` or ``file://``) to ``destination`` atomically."""
    # The body goes to a temporary file beside ``destination`` that is renamed into place only
    # once complete (and matching the announced Content-Length), so an interrupted download
    # never leaves a half-written file under the final name. Any failure raises OSError.
    from tqdm.auto import tqdm

    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".part", dir=destination.parent
    )
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
            with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                received = 0
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=destination.name,
                    disable=not progress,
                ) as bar:
                    while chunk := response.read(_CHUNK_BYTES):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        if total is not None and received != total:
            raise OSError(f"incomplete download: got {received} of {total} bytes")
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
