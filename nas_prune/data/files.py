"""Finding a file-based dataset on disk and, if allowed, downloading it.

Files are searched, in order, in ``data_dir``, ``$NAS_PRUNE_DATA``, ``./data`` and
``/usr/share/datasets``, each directly and in a ``<name>`` subfolder (plus the usual archive layouts
such as ``cifar-10-batches-py/`` or torchvision's ``FashionMNIST/raw/``). A download goes into
``<data_dir or ./data>/<name>``, file by file through :func:`nas_prune.atomic.atomic_open`, so a killed
download never leaves half a file.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from nas_prune.atomic import atomic_open
from nas_prune.errors import NasPruneError

from .sources import FILE_DATASETS, FileDataset

SYSTEM_DATA_DIR = Path("/usr/share/datasets")
"""Last place searched; Debian's ``dataset-fashion-mnist`` package installs there."""

DOWNLOAD_TIMEOUT_S = 15.0
"""Socket timeout for each download attempt (seconds)."""


# ---------------------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------------------


def _roots(data_dir: str | os.PathLike | None) -> list[Path]:
    roots = [Path(data_dir)] if data_dir else []
    if os.environ.get("NAS_PRUNE_DATA"):
        roots.append(Path(os.environ["NAS_PRUNE_DATA"]))
    roots += [Path("data"), SYSTEM_DATA_DIR]
    return roots


def _candidate_dirs(name: str, roots: list[Path]) -> Iterator[Path]:
    """For each root: ``root/<name>`` (and archive layouts below it), then the root itself."""
    subdirs = FILE_DATASETS[name].subdirs
    for root in roots:
        for base in (root / name, root):
            yield from (base / sub for sub in subdirs)
            yield base


def _files_in(name: str, folder: Path) -> list[Path] | None:
    """The dataset's files in ``folder`` (idx files raw or gzipped), or None if any is missing."""
    source = FILE_DATASETS[name]
    found = []
    for file in source.files:
        options = [folder / file, folder / f"{file}.gz"] if source.kind == "idx" else [folder / file]
        hit = next((p for p in options if p.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found


def _find(name: str, roots: list[Path]) -> list[Path] | None:
    for folder in _candidate_dirs(name, roots):
        files = _files_in(name, folder)
        if files is not None:
            return files
    return None


# ---------------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------------


def _download_file(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download ``url`` to ``dest`` atomically: a killed download never leaves half a file."""
    with atomic_open(dest, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
        shutil.copyfileobj(response, out)


def _writable(path: Path) -> bool:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK)


def _download(name: str, data_dir: str | os.PathLike | None) -> Path:
    """Fetch the dataset into ``<data_dir or ./data>/<name>``; return that folder."""
    source = FILE_DATASETS[name]
    bases = [Path(data_dir)] if data_dir else []
    bases.append(Path("data"))
    base = next((b for b in bases if _writable(b)), None)
    if base is None:
        raise OSError(f"none of {', '.join(map(str, bases))} is writable")
    target = base / name
    new_dirs = [d for d in (target, base) if not d.exists()]
    try:
        _fetch_into(source, target)
    except BaseException:
        for folder in new_dirs:  # leave no empty folders behind after a failed download
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return target


def _fetch_into(source: FileDataset, target: Path) -> None:
    if source.kind == "idx":
        for file in source.files:
            dest = target / f"{file}.gz"
            if not dest.is_file():
                _download_from_mirrors([mirror + f"{file}.gz" for mirror in source.urls], dest)
    else:
        archive = target / Path(source.urls[0]).name
        _download_file(source.urls[0], archive)
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tar.extractall(target)
        archive.unlink()


def _download_from_mirrors(urls: list[str], dest: Path) -> None:
    """Try each URL in turn; raise the first mirror's error if all fail."""
    errors = []
    for url in urls:
        try:
            _download_file(url, dest)
            return
        except OSError as err:
            errors.append(err)
    raise errors[0]


# ---------------------------------------------------------------------------------------------------
# Both
# ---------------------------------------------------------------------------------------------------


def locate(name: str, data_dir: str | os.PathLike | None, download: bool) -> list[Path]:
    """Find the files of the file-based dataset ``name`` (in ``FileDataset.files`` order), downloading
    them if allowed.

    Raises:
        NasPruneError: Not found (and not downloaded); one sentence naming every folder searched and
            how to get the data.
    """
    roots = _roots(data_dir)
    files = _find(name, roots)
    if files is not None:
        return files
    problem = "downloading is off"
    if download:
        try:
            target = _download(name, data_dir)
            files = _find(name, [target])
            if files is not None:
                return files
            problem = f"the download into {target} did not produce the expected files"
        except Exception as err:  # network, disk, a corrupt archive: all end in the same advice
            first_line = (str(err).splitlines() or [""])[0]
            problem = f"the download failed ({type(err).__name__}: {first_line})"
    source = FILE_DATASETS[name]
    searched = ", ".join(str(r) if r.is_absolute() else f"./{r}" for r in roots)
    raise NasPruneError(
        f"{name} data not found in {searched} (directly or in a '{name}' subfolder) and {problem}; "
        f"get it with {source.install_hint}, or put the files in a directory and pass --data-dir DIR"
    )
