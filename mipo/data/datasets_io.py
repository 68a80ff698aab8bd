"""Rows from ``datasets`` objects: in-memory ``Dataset``/``DatasetDict``, folders
written by ``save_to_disk``, and the Hugging Face hub.

The hub is tried only when it answers: unless offline mode is already on
(``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1``), a TCP connection to the hub
endpoint is attempted first (3 s). When it fails the load runs in offline mode,
so a data set in the local cache still loads and any other one fails at once
with one line, instead of a minute of retries.
"""

import contextlib
import os
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mipo.data.errors import DataError

Row = tuple[str, object]

_PROBE_SECONDS = 3.0


def _datasets(label: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(
            "reading this needs the 'datasets' package, which is not installed",
            file=label,
            fix="pip install datasets, or pass a .json/.jsonl/.csv/.parquet file",
        ) from None
    return datasets


def is_dataset(value: object) -> bool:
    """True for ``datasets`` objects (checked without importing ``datasets``)."""
    return type(value).__module__.split(".")[0] == "datasets" and hasattr(
        value, "__iter__"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_from_disk(path: Path, label: str) -> Any:
    """``datasets.load_from_disk(path)``, errors as :class:`DataError`."""
    datasets = _datasets(label)
    try:
        return datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises many types for bad folders
        raise DataError(
            f"cannot load the save_to_disk folder ({_first_line(error)})",
            file=label,
            fix="write it again with save_to_disk",
        ) from None


def _split_of(dataset: Mapping[str, Any], label: str, split: str | None) -> str:
    names = list(dataset.keys())
    if split is None:
        if "train" in names:
            return "train"
        if len(names) == 1:
            return names[0]
        raise DataError(
            f"holds the splits {', '.join(names)} and none is 'train'",
            file=label,
            fix="choose one with split=NAME",
        )
    base = split.split("[")[0]
    if base not in names:
        raise DataError(
            f"has no split {split!r} (splits: {', '.join(names) or 'none'})",
            file=label,
            fix="choose one of its splits",
        )
    return split


def dataset_rows(
    dataset: Any, label: str, *, split: str | None = None
) -> Iterator[Row]:
    """Rows of a ``Dataset``, ``IterableDataset``, ``DatasetDict`` or
    ``IterableDatasetDict``; sources are ``LABEL:ROW`` (``LABEL[SPLIT]:ROW`` for a
    dict of splits), rows numbered from 1."""
    if isinstance(dataset, Mapping):
        chosen = _split_of(dataset, label, split)
        base = chosen.split("[")[0]
        yield from dataset_rows(dataset[base], f"{label}[{chosen}]")
        return
    if split is not None:
        raise DataError(
            f"is a single Dataset, so split {split!r} does not apply",
            file=label,
            fix="drop the split option",
        )
    if hasattr(dataset, "with_format"):
        dataset = dataset.with_format(None)  # plain Python values, not arrays
    try:
        for number, row in enumerate(dataset, start=1):
            yield f"{label}:{number}", row
    except DataError:
        raise
    except Exception as error:  # a lazily read data set can fail while iterating
        raise DataError(
            f"cannot read the rows ({_first_line(error)})", file=label
        ) from None


def hub_reachable() -> bool:
    """Whether the Hugging Face hub answers a TCP connection within a few
    seconds (always true behind a proxy, which may reach what this cannot)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return True  # a proxy may reach what a direct connection cannot
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=_PROBE_SECONDS):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline_mode(datasets: Any) -> Iterator[None]:
    from huggingface_hub import constants

    saved = (
        constants.HF_HUB_OFFLINE,
        datasets.config.HF_HUB_OFFLINE,
        datasets.config.HF_DATASETS_OFFLINE,
    )
    constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
    datasets.config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        (
            constants.HF_HUB_OFFLINE,
            datasets.config.HF_HUB_OFFLINE,
            datasets.config.HF_DATASETS_OFFLINE,
        ) = saved


def _already_offline(datasets: Any) -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE)


def hub_rows(
    name: str,
    *,
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    data_files: str | Sequence[str] | Mapping[str, Any] | None = None,
    data_dir: str | None = None,
) -> Iterator[Row]:
    """Rows of the hub data set ``name`` (``split`` defaults to ``train``);
    sources are ``NAME[SPLIT]:ROW``."""
    datasets = _datasets(name)
    split = split or "train"
    label = f"{name}[{split}]"
    offline = _already_offline(datasets) or not hub_reachable()
    context = _offline_mode(datasets) if offline else contextlib.nullcontext()
    try:
        with context:
            table = datasets.load_dataset(
                name,
                config,
                split=split,
                revision=revision,
                data_files=data_files,
                data_dir=data_dir,
            )
    except Exception as error:  # the hub raises many types; report them as one
        where = (
            "the hub is unreachable (offline mode) and it is not in the local cache; "
            if offline
            else ""
        )
        raise DataError(
            f"cannot load it as a Hugging Face data set: {where}{_first_line(error)}",
            file=name,
            fix="pass a local file (.json, .jsonl, .csv, .parquet) or a save_to_disk "
            "folder, or load it once online to cache it",
        ) from None
    yield from dataset_rows(table, label)


def list_rows(rows: Iterable[object], label: str) -> Iterator[Row]:
    """Rows of an in-memory list (of dicts), numbered from 1."""
    for number, row in enumerate(rows, start=1):
        yield f"{label}:{number}", row


__all__ = [
    "dataset_rows",
    "hub_reachable",
    "hub_rows",
    "is_dataset",
    "list_rows",
    "load_from_disk",
]
