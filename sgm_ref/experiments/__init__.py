"""The paper's claim as experiments anyone can rerun (`sgm-ref experiment rate`)."""

from .rate import FAMILIES, FULL, QUICK, SETTINGS, make_target, run_cell, sweep_summary
from .report import write_report
from .sweep import run_sweep

__all__ = ["FAMILIES", "QUICK", "FULL", "SETTINGS", "make_target", "run_cell", "sweep_summary", "run_sweep", "write_report"]
