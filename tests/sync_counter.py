"""Count the host syncs a piece of code would make on an accelerator, on the CPU.

On CUDA, reading a device value on the host (``item``, ``bool``, ``float``,
``tolist``, ``.cpu()``) or running an operation whose output size depends on
the data (``nonzero``, boolean-mask indexing, ``masked_select``,
``repeat_interleave`` without ``output_size``, ``unique``) waits for every queued
kernel: a host sync. On the CPU nothing waits, but the same operations run,
so :class:`SyncCounter` counts them. It uses a ``TorchDispatchMode`` for the
aten operations and patches the ``Tensor`` methods that read values without
dispatching. Each sync is charged to the innermost frame of the calling code
in ``mipo/`` or in an installed library (``transformers``, ``accelerate``, ...).
On a CUDA machine ``torch.cuda.set_sync_debug_mode("warn")`` gives the real
count.
"""

import collections
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ATEN = torch.ops.aten
_ALWAYS = {
    _ATEN._local_scalar_dense.default,
    _ATEN.nonzero.default,
    _ATEN.masked_select.default,
    _ATEN._unique2.default,
    _ATEN.unique_consecutive.default,
    _ATEN.unique_dim.default,
}
_INDEXING = {_ATEN.index.Tensor, _ATEN.index_put.default, _ATEN.index_put_.default}
_READS = ("tolist", "cpu", "numpy")
_ROOTS = ("/mipo/", "/site-packages/")


def _is_sync(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if func in _ALWAYS:
        return True
    if func in _INDEXING:
        return any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for i in args[1]
            if i is not None
        )
    if func is _ATEN.repeat_interleave.Tensor:
        return kwargs.get("output_size") is None
    return False


def _caller() -> str:
    """``package/path.py`` of the innermost frame in mipo or a library
    (torch itself excluded)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "/torch/" not in name and any(root in name for root in _ROOTS):
            tail = name.split("/site-packages/")[-1]
            return tail[tail.rfind("/mipo/") + 1 :] if "/mipo/" in tail else tail
        frame = frame.f_back
    return "?"


class SyncCounter(TorchDispatchMode):
    """``with SyncCounter() as counter: ...``; ``counter.by_file`` maps a file
    to the number of syncs charged to it."""

    def __init__(self) -> None:
        super().__init__()
        self.by_file: collections.Counter[str] = collections.Counter()
        self._patches = contextlib.ExitStack()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204, ARG002
        kwargs = kwargs or {}
        if _is_sync(func, args, kwargs):
            self.by_file[_caller()] += 1
        return func(*args, **kwargs)

    def __enter__(self) -> "SyncCounter":
        for name in _READS:
            original = getattr(torch.Tensor, name)
            self._patches.enter_context(_patched(name, self._reader(original)))
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._patches.close()

    def _reader(self, original: Any) -> Any:
        counter = self

        def read(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            counter.by_file[_caller()] += 1
            return original(tensor, *args, **kwargs)

        return read

    def total(self, prefix: str = "") -> int:
        """Syncs charged to files whose path starts with ``prefix``."""
        return sum(n for name, n in self.by_file.items() if name.startswith(prefix))


@contextlib.contextmanager
def _patched(name: str, replacement: Any) -> Iterator[None]:
    original = getattr(torch.Tensor, name)
    setattr(torch.Tensor, name, replacement)
    try:
        yield
    finally:
        setattr(torch.Tensor, name, original)
