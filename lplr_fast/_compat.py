"""Python 3.10 stand-ins for the few 3.11 names the package uses (``requires-python >= 3.10``).

* ``tomllib``: the standard TOML parser from 3.11; on 3.10 the same parser under its PyPI
  name ``tomli`` (a dependency there only).
* ``UTC``: ``datetime.timezone.utc`` (``datetime.UTC`` is 3.11+).
"""

from __future__ import annotations

import datetime

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

UTC = datetime.timezone.utc

__all__ = ["UTC", "tomllib"]
