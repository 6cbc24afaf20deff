"""Every coupling family by name: ``GlowConfig.coupling`` is one of these keys.

Affine and additive coupling live in ``layers``; families with a module of their own (``splines``) are
built on ``layers.Coupling`` and join here, above both, so no module imports one that imports it back.
"""

from __future__ import annotations

from .layers import BASIC_COUPLINGS, Coupling
from .splines import SplineCoupling

COUPLINGS: dict[str, type[Coupling]] = {**BASIC_COUPLINGS, "spline": SplineCoupling}
