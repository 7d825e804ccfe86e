"""`TypedDict`, `Required` and `NotRequired` on every supported Python without a runtime
dependency: `typing` has them from 3.11; on 3.10 `typing_extensions` if installed, else stand-ins
(the generated module uses postponed annotations, so the markers are never evaluated)."""

from __future__ import annotations

import sys
from typing import TypedDict

if sys.version_info >= (3, 11):
    from typing import NotRequired, Required
else:  # pragma: no cover - exercised on 3.10 only
    try:
        from typing_extensions import NotRequired, Required
    except ImportError:

        class _Marker:
            def __class_getitem__(cls, item: object) -> object:
                return item

        class NotRequired(_Marker):  # type: ignore[no-redef]
            """Stand-in for `typing.NotRequired` (3.11+)."""

        class Required(_Marker):  # type: ignore[no-redef]
            """Stand-in for `typing.Required` (3.11+)."""


__all__ = ["NotRequired", "Required", "TypedDict"]
