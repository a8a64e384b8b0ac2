"""wsss: a workbench for weakly supervised semantic segmentation."""
__version__ = "0.1.0"

from wsss import numerics as _numerics

if _numerics.portable_requested():  # the tests (wsss.numerics); off by default, which imports nothing more
    _numerics.use_portable_numerics()
