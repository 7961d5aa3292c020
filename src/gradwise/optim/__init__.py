"""The named optimizers, one module per paper family. Every module here is imported and registers itself."""

import importlib
import pkgutil

from ..core import entries

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from .lookahead import Lookahead  # noqa: E402  (a wrapper, not a registered optimizer)

_classes = {e.cls.__name__: e.cls for e in entries()}
_classes["Lookahead"] = Lookahead
globals().update(_classes)
__all__ = sorted(_classes)
