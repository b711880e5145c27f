"""smids-eval: donor-grouped, cross-validated benchmark of VGG19 variants on SMIDS crops,
with calibration, MC-dropout confidence, out-of-distribution checks and a random-forest head."""

__version__ = "0.1.0"

#: Canonical class order used everywhere (labels are indices into this tuple).
CLASSES = ("Normal_Sperm", "Abnormal_Sperm", "Non-Sperm")
