"""Calibration stage: FP32 model.onnx + images -> model.int8.onnx (explicit Q/DQ), measured.

``calibrate`` is the one entry point (``mgd-rt calibrate`` and ``python calibration/calibrate.py``
are thin over it); ``accuracy_report`` compares the INT8 graph with the FP32 one on held-out
images; ``recover_accuracy`` puts the layers that cost accuracy back in FP32 until those
images pass (``recovery.py``); ``sensitivity.sweep`` finds the layers whose quantization costs
accuracy; the default exclusions live in ``exclusions.py``.
"""

from __future__ import annotations

from mgd_rt.calibration.exclusions import DEFAULT_EXCLUDE_OP_TYPES, FULL_RESOLUTION_DIVISOR
from mgd_rt.calibration.quantize import CALIBRATION_KEYS, METHODS, calibrate
from mgd_rt.calibration.recovery import RecoveryBudget, RecoveryResult, recover_accuracy
from mgd_rt.calibration.report import AccuracyReport, accuracy_report, record_check

__all__ = [
    "CALIBRATION_KEYS",
    "DEFAULT_EXCLUDE_OP_TYPES",
    "FULL_RESOLUTION_DIVISOR",
    "METHODS",
    "AccuracyReport",
    "RecoveryBudget",
    "RecoveryResult",
    "accuracy_report",
    "calibrate",
    "record_check",
    "recover_accuracy",
]
