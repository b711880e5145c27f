import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy.special import softmax  # noqa: E402

from smids_eval.evaluate.calibration import (  # noqa: E402
    CalibrationScorer,
    TemperatureScaler,
    adaptive_ce,
    calibration_errors,
)
from smids_eval.outputs import ModelOutputs  # noqa: E402


def overconfident(n, rng, scale=5.0):
    """Labels drawn from softmax(z), so softmax(z) is calibrated and z * scale is overconfident."""
    z = rng.normal(size=(n, 3)) * 1.5
    p = softmax(z, axis=1)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return ModelOutputs(logits=z * scale, features=z, labels=y)


def test_temperature_scaling_lowers_ece_on_overconfident_model():
    rng = np.random.default_rng(0)
    val, test = overconfident(1000, rng), overconfident(1000, rng)
    res = CalibrationScorer().fit(None, val).score(test)
    assert res["cal_ece"] > 0.15
    assert res["cal_ece_ts"] < res["cal_ece"] / 3
    assert res["cal_ace_ts"] < res["cal_ace"]
    assert 3.5 < res["cal_temperature"] < 7.0  # true temperature is 5


def test_netcal_path_is_used_and_matches_scipy_nll_fit():
    rng = np.random.default_rng(1)
    val = overconfident(800, rng)
    scaler = TemperatureScaler().fit(val.logits, val.labels)
    assert scaler.method_ == "netcal-mle"
    # the scipy NLL path (forced by an impossible netcal range) finds the same temperature
    forced = TemperatureScaler(t_bounds=(scaler.temperature_ * 1.01, 50.0))
    forced.fit(val.logits, val.labels)
    assert forced.method_ == "scipy-nll"
    assert abs(forced.temperature_ - scaler.temperature_) / scaler.temperature_ < 0.05


def test_reliability_plot_draws_filled_bins():
    rng = np.random.default_rng(2)
    out = overconfident(300, rng)
    fig, ax = plt.subplots()
    from smids_eval.evaluate.calibration import plot_reliability

    plot_reliability(out.probs, out.labels, ax, title="raw")
    assert ax.get_title() == "raw" and len(ax.patches) > 0
    assert "ECE" in ax.get_legend().get_texts()[0].get_text()
    plt.close(fig)


def test_calibration_errors_match_a_hand_computed_example():
    """Two filled bins: 4 crops at confidence 0.9 (3 right), 2 at 0.7 (1 right)."""
    conf = np.array([0.9, 0.9, 0.9, 0.9, 0.7, 0.7])
    probs = np.stack([conf, (1 - conf) / 2, (1 - conf) / 2], axis=1)
    labels = np.array([0, 0, 0, 1, 0, 2])
    gaps = {0.9: abs(3 / 4 - 0.9), 0.7: abs(1 / 2 - 0.7)}
    res = calibration_errors(probs, labels)
    assert res["ece"] == pytest.approx((4 * gaps[0.9] + 2 * gaps[0.7]) / 6)
    assert res["mce"] == pytest.approx(max(gaps.values()))


def test_adaptive_ace_uses_equal_mass_bins():
    """6 crops in 3 equal-mass bins: (.6 wrong, .65 right), (.7, .8 right), (.9, .95 wrong)."""
    conf = np.array([0.95, 0.6, 0.8, 0.65, 0.9, 0.7])
    correct = np.array([0, 0, 1, 1, 0, 1])
    expected = (abs(0.5 - 0.625) + abs(1 - 0.75) + abs(0 - 0.925)) / 3
    assert adaptive_ce(conf, correct, bins=3) == pytest.approx(expected)
    assert adaptive_ce(np.full(4, 0.5), np.array([1, 0, 1, 1]), bins=15) == pytest.approx(0.25)


def test_ace_equal_width_is_netcal_multiclass_ace_and_missing_classes_work():
    from netcal.metrics import ACE

    rng = np.random.default_rng(3)
    out = overconfident(500, rng)
    res = calibration_errors(out.probs, out.labels)
    assert res["ace_equal_width"] == pytest.approx(ACE(15).measure(out.probs, out.labels))
    assert res["ace"] != pytest.approx(res["ace_equal_width"])
    for keep in ([1], [0, 2]):
        mask = np.isin(out.labels, keep)
        sub = calibration_errors(out.probs[mask], out.labels[mask])
        assert all(np.isfinite(v) for v in sub.values())
