"""``python -m smids_eval.predict`` on a real tiny run: CSV columns, bad files, fold ensemble,
exact agreement with the study's own held-out outputs, grey variant, CLI errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from smids_eval import CLASSES, StudyConfig, run_study
from smids_eval.cli import module_main
from smids_eval.predict import Predictor, combine

TINY = str(Path(__file__).parent / "profiles" / "tiny.toml")
PROBS = ["prob_normal_sperm", "prob_abnormal_sperm", "prob_non_sperm"]
DOCUMENTED = ["path", "status", "error", "predicted_class", *PROBS, "max_prob", "mc_mi",
              "ood_score", "in_distribution", "conformal_set", "decision", "refer_reason",
              "variant", "setting", "folds"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished tiny run (F.0: RGB + MC-dropout, A.0: grey, no dropout; tuned, 2 folds) and
    the root of the synthetic data set it was trained on."""
    out, cache = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("cache")
    result = run_study(StudyConfig(variants=("F.0", "A.0"), profile=TINY, rf=False,
                                   settings=("tuned",), trials=1, out=str(out),
                                   cache_dir=str(cache), progress=False, seed=2))
    run_dir = result.run.root
    (data,) = [d for d in (cache / "synthetic").iterdir() if d.is_dir()]
    return run_dir, data


@pytest.fixture(scope="module")
def inputs(run, tmp_path_factory) -> Path:
    """Two synthetic crops per class in a subfolder, a corrupt .png and a text file."""
    _, data = run
    folder = tmp_path_factory.mktemp("new-images")
    (folder / "crops").mkdir()
    for name in CLASSES:
        for src in sorted((data / name).glob("*.bmp"))[:2]:
            shutil.copy(src, folder / "crops" / f"{name}-{src.name}")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3)
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def test_ensemble_csv_columns_good_and_bad_files(run, inputs):
    run_dir, _ = run
    assert module_main("predict", ["--run", str(run_dir), "--variant", "F.0", str(inputs)]) == 0
    frame = pd.read_csv(run_dir / "predict-F.0.csv")
    assert list(frame.columns) == DOCUMENTED
    assert len(frame) == 6 + 2
    status = dict(zip(frame.path.map(lambda p: Path(p).name), frame.status, strict=True))
    assert status["corrupt.png"] == "unreadable" and status["notes.txt"] == "not_an_image"
    bad = frame[frame.status != "ok"]
    assert bad.error.str.len().gt(0).all() and bad[PROBS + ["decision"]].isna().all().all()
    good = frame[frame.status == "ok"]
    assert len(good) == 6 and good.error.isna().all()
    np.testing.assert_allclose(good[PROBS].sum(axis=1), 1.0, atol=1e-9)
    assert good.predicted_class.isin(CLASSES).all()
    assert good.decision.isin(["accept", "refer"]).all()
    assert good.mc_mi.notna().all() and (good.mc_mi >= 0).all()      # F.0 has dropout
    assert good.in_distribution.isin([True, False]).all() and good.ood_score.notna().all()
    assert (frame.folds == "0|1").all() and (frame.setting == "tuned").all()


def test_ensemble_is_the_mean_of_single_fold_models(run, inputs):
    run_dir, _ = run
    single = [Predictor(run_dir, "F.0", fold=k).predict_paths([inputs]) for k in (0, 1)]
    both = Predictor(run_dir, "F.0").predict_paths([inputs])
    ok = both.status == "ok"
    expected = (single[0].loc[ok, PROBS].to_numpy(float) + single[1].loc[ok, PROBS].to_numpy(float)) / 2
    np.testing.assert_allclose(both.loc[ok, PROBS].to_numpy(float), expected, atol=1e-12)
    for frame in single:
        refer = ok & (frame.decision == "refer")
        assert (both.loc[refer, "decision"] == "refer").all()   # accept needs every fold


def test_grey_variant_reproduces_the_studys_held_out_outputs(run):
    """Rebuilt A.0 fold-0 model (random prefix from the run seed) gives exactly the study's
    held-out probabilities, temperature scaled; no MC-dropout numbers for a non-dropout head."""
    run_dir, data = run
    stored = pd.read_csv(run_dir / "predictions" / "A.0" / "r0-fold0-tuned.csv.gz").head(12)
    predictor = Predictor(run_dir, "A.0", fold=0)
    frame = predictor.predict_paths([data / p for p in stored.path])
    assert (frame.status == "ok").all() and frame.mc_mi.isna().all()
    # compare on the logit scale (the tiny model is near uniform): T·log p_predict ≡ log p_study
    centred = lambda p: p - p.mean(1, keepdims=True)  # noqa: E731
    temperature = predictor.models[0].artifacts.temperature
    np.testing.assert_allclose(centred(np.log(frame[PROBS].to_numpy(float)) * temperature),
                               centred(np.log(stored[PROBS].to_numpy(float))), atol=1e-5)
    assert list(frame.predicted_class) == list(stored.predicted)


def test_combine_rules():
    """Majority in-distribution (tie = out), union of conformal sets, accept only when
    in-distribution, every fold confident and the folds agree; refer_reason names the first
    failing check."""
    def fold(p, ind, sets, confident):
        f = pd.DataFrame(np.array(p, float), columns=PROBS)
        f.insert(0, "predicted_class", np.asarray(CLASSES)[np.argmax(p, 1)])
        return f.assign(mc_mi=np.nan, ood_score=[1.0] * len(p), in_distribution=ind,
                        conformal_set=sets, confident=confident)
    a = fold([[.9, .05, .05], [.6, .3, .1], [.9, .05, .05], [.9, .05, .05]],
             [True, True, True, True], ["Normal_Sperm"] * 4, [True, True, True, True])
    b = fold([[.8, .1, .1], [.2, .7, .1], [.9, .05, .05], [.1, .8, .1]],
             [True, False, True, True], ["Normal_Sperm", "Abnormal_Sperm", "Normal_Sperm",
                                         "Abnormal_Sperm"], [True, True, False, True])
    out = combine([a, b])
    np.testing.assert_allclose(out[PROBS].to_numpy()[:2], [[.85, .075, .075], [.4, .5, .1]])
    assert list(out.in_distribution) == [True, False, True, True]
    assert list(out.conformal_set)[:2] == ["Normal_Sperm", "Normal_Sperm|Abnormal_Sperm"]
    assert list(out.decision) == ["accept", "refer", "refer", "refer"]
    assert list(out.refer_reason) == ["", "ood", "low_confidence", "fold_disagreement"]
    assert out.mc_mi.isna().all()


def test_cli_errors_exit_2_and_say_what_exists(run, inputs, tmp_path, capsys):
    run_dir, _ = run
    base = [str(inputs), "--run", str(run_dir)]
    cases = [(["--variant", "Z.9"], "available: A.0, F.0"),
             (["--variant", "F.0+RF"], "random-forest"),
             (["--variant", "F.0", "--setting", "specified"], "available settings: tuned"),
             (["--variant", "F.0", "--fold", "7"], "available folds: 0, 1"),
             (["--variant", "F.0", "--weights-file", str(inputs / "notes.txt")], "drop --weights-file")]
    for extra, message in cases:
        assert module_main("predict", base + extra) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert module_main("predict", [str(inputs), "--run", str(tmp_path / "nope"), "--variant", "F.0"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        module_main("predict", ["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ["--run", "--variant", "--setting", "--fold", "--out", "--device", "--weights-file",
                 "union", "majority", "not_an_image", "acquisition", "semantic", "refer_reason",
                 "Clopper-Pearson", "batch"]:
        assert word in text, word


def test_foreign_lab_noise_blank_and_tiny_images_are_referred_as_ood(run, tmp_path, capsys):
    """Images from another lab (synthetic foreign-lab generator), uniform noise, blank and 1x1
    images are out of distribution: refer, reason ood; a folder of 40 foreign-lab crops is
    flagged as a batch (sidecar JSON), while the run's own training crops are kept."""
    from PIL import Image

    from smids_eval.data.foreign_lab import FOREIGN_LABS, foreign_lab_images

    run_dir, data = run
    rng = np.random.default_rng(0)
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(odd / "noise.png")
    Image.new("RGB", (64, 64), (255, 255, 255)).save(odd / "blank.png")
    Image.new("RGB", (1, 1), (120, 80, 140)).save(odd / "one-pixel.png")
    for lab in FOREIGN_LABS:
        folder = tmp_path / lab
        folder.mkdir()
        for i, im in enumerate(foreign_lab_images(40, 96, seed=5, lab=lab)):
            Image.fromarray(im).save(folder / f"{i}.png")
    predictor = Predictor(run_dir, "F.0")
    frame = predictor.predict_paths([odd])
    assert (frame.decision == "refer").all() and (frame.refer_reason == "ood").all(), frame
    for lab in FOREIGN_LABS:
        frame = predictor.predict_paths([tmp_path / lab])
        assert (frame.decision == "accept").mean() <= 0.02, lab
        assert (frame.refer_reason == "ood").mean() >= 0.95, lab
        assert predictor.batch_result["shifted"], (lab, predictor.batch_result)
    own = sorted((data / CLASSES[0]).glob("*.bmp"))[:30]
    frame = predictor.predict_paths(own)
    # the synthetic donors differ in stain like labs do (and a tiny run fits 40 images), so
    # only the contrast is asserted here; the >= 90% target on held-out folds of the real copy
    # is measured by the benchmark run
    assert (frame.refer_reason == "ood").mean() <= 0.75
    out = tmp_path / "lab.csv"
    assert module_main("predict", ["--run", str(run_dir), "--variant", "F.0", "--out", str(out),
                                   str(tmp_path / "grey_phase")]) == 0
    assert "does NOT look like" in capsys.readouterr().err
    assert json.loads(out.with_name("lab.csv.batch.json").read_text())["p_value"] < 0.01


def test_run_may_be_the_out_folder_holding_one_run(run, inputs, tmp_path, capsys, caplog):
    """``--run`` given the study's ``--out`` folder: its one run is used (and logged); with two
    runs inside, exit 2 and a line naming both."""
    run_dir, _ = run
    out = tmp_path / "results"
    out.mkdir()
    (out / run_dir.name).symlink_to(run_dir, target_is_directory=True)
    (out / "notes").mkdir()  # a folder that is no run is not counted
    made = run_dir / "predict-A.0.csv"
    made.unlink(missing_ok=True)
    with caplog.at_level("INFO", logger="smids_eval.run_folder"):
        assert module_main("predict", ["--run", str(out), "--variant", "A.0", str(inputs)]) == 0
    assert f"using the run inside it: {out / run_dir.name}" in caplog.text
    assert made.is_file() and not (out / "predict-A.0.csv").exists()
    assert len(pd.read_csv(made)) == 8
    (out / "other-run").mkdir()
    (out / "other-run" / "config.toml").write_text('run = "other-run"\n')
    assert module_main("predict", ["--run", str(out), "--variant", "A.0", str(inputs)]) == 2
    names = ", ".join(sorted(["other-run", run_dir.name]))
    assert f"{out} holds runs {names}: pass one of them to --run" in capsys.readouterr().err
