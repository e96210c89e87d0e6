"""Optional dependencies: import one on first use, or say which extra installs it.

The core install carries only what ``import deepfn`` needs (torch, torchvision, einops,
safetensors, tqdm, numpy). A few functions need more: ``deepfn.data.digits`` reads
scikit-learn's bundled data, ``deepfn.train.plot_history`` draws with matplotlib. They import
through :func:`import_extra`, so that a missing package names the extra that brings it
(``pip install 'deepfn[data]'``) instead of a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["import_extra"]


def import_extra(module: str, *, package: str, extra: str, needed_by: str) -> ModuleType:
    """Import ``module``, or raise an ``ImportError`` naming the extra that installs it.

    Args:
        module: the dotted module to import, e.g. ``"sklearn.datasets"``.
        package: its name on the package index, e.g. ``"scikit-learn"``.
        extra: deepfn's extra that installs it, e.g. ``"data"``.
        needed_by: the public function that asked, e.g. ``"deepfn.data.digits"``.

    Returns:
        The imported module.

    Raises:
        ImportError: ``module`` cannot be imported; the message reads
            ``"deepfn.data.digits needs scikit-learn: pip install 'deepfn[data]'"`` and the
            original error is chained.

    Examples:
        >>> import_extra("math", package="math", extra="none", needed_by="doc").sqrt(4.0)
        2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{needed_by} needs {package}: pip install 'deepfn[{extra}]'") from error
