"""The named optimizers, one module per paper family. Every module here is imported and registers itself."""

import importlib
import pkgutil

from ..core import entries

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

_classes = {e.cls.__name__: e.cls for e in entries()}
globals().update(_classes)
__all__ = sorted(_classes)
