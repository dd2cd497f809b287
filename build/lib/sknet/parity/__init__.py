"""Cross-backend numerical parity: checks (``checks``), the per-layer report (``layers``), output (``report``)."""
from .checks import CHECKS, DEFAULT_CHECKS, TOLERANCES, make_setup, run_checks

__all__ = ["CHECKS", "DEFAULT_CHECKS", "TOLERANCES", "make_setup", "run_checks"]
