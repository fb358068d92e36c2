"""Where the files shipped inside the package are (`ssrl_jax/assets/`).

Resolved from this module's own location rather than `importlib.resources`: with a setuptools
editable install, run from outside the source tree, `resources.files("ssrl_jax")` sees a
namespace package and fails ("MultiplexedPath only supports directories"). The assets are
plain files next to the modules in every install this project supports (wheel, editable).
"""

from __future__ import annotations

import pathlib

ASSETS = pathlib.Path(__file__).resolve().parent / "assets"


def asset_path(*parts: str) -> pathlib.Path:
    """``ssrl_jax/assets/<parts...>``."""
    return ASSETS.joinpath(*parts)
