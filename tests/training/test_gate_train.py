"""Training the input gate: sources, grouped folds, weights, threshold choice, and a tiny real run through
``cxr-train-gate`` whose artifact loads back with the same outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.gate import GateModel
from model_store.artifact import load_artifact
from model_store.preprocessing import preprocess
from training.gate import (
    choose_gate_threshold,
    grouped_folds,
    main,
    parse_boost,
    runtime_equivalence,
    sample_weights,
)
from training.gate_data import SYNTHETIC_KINDS, GateSet, source_of, synthetic_negatives


@pytest.mark.parametrize(("name", "source"), [
    ("set12_02.png", "kair"), ("set5_bird.png", "kair"), ("jw_optos_1.png", "jw"), ("jw_knee_3.png", "jw"),
    ("hip_us_167854.png", "radoss"), ("ddh_331.png", "radoss"), ("nih64_00000001_001.png", "nih"),
    ("nih_00000001_000.png", "nih"), ("brainmri_glioma_Te-gl_0037.png", "brainmri"),
    ("isbi_em_3.png", "isbi_em"), ("mystery_1.png", "unknown:mystery"),
    ("rsnahand_10009.png", "rsna_boneage"), ("rsnareg_1437.png", "rsna_boneage"), ("medpix_020.png", "medpix"),
    ("sr22_test_164_jpg.rf.4b37.png", "sr22"), ("chexpert_patient64547_study1_view3_lateral.png", "chexpert"),
])
def test_source_of_file_names(name, source):
    assert source_of(name) == source


def toy_set(n_kids: int = 200) -> GateSet:
    sources = ["kermany"] * n_kids + ["a"] * 30 + ["b"] * 20 + ["c"] * 10 + ["adult1"] * 15 + ["adult2"] * 5
    kinds = ["pediatric_cxr"] * n_kids + ["ct"] * 30 + ["mr"] * 20 + ["mr"] * 10 + ["adult_cxr"] * 20
    y = np.array([1] * n_kids + [0] * 60 + [1] * 20)
    return GateSet(np.zeros((len(y), 4, 4, 1), np.float32), y, np.array(kinds), np.array(sources))


def test_grouped_folds_keep_each_source_whole_and_spread_the_children():
    data = toy_set()
    folds = grouped_folds(data, 3, seed=1)
    for source in ("a", "b", "c", "adult1", "adult2"):
        assert len(set(folds[data.sources == source])) == 1, source
    assert set(folds[data.sources == "kermany"]) == {0, 1, 2}
    assert (folds >= 0).all()


def test_grouped_folds_put_the_sources_of_one_kind_in_different_folds():
    # by load alone "d" would join "c" (the emptiest fold then): that fold would train without MR at all
    sizes = {"a": ("ct", 30), "b": ("ct", 25), "c": ("mr", 20), "d": ("mr", 10), "e": ("us", 10), "f": ("us", 8)}
    sources = ["kermany"] * 100 + [s for s, (_, n) in sizes.items() for _ in range(n)]
    kinds = ["pediatric_cxr"] * 100 + [k for k, n in sizes.values() for _ in range(n)]
    data = GateSet(np.zeros((len(kinds), 4, 4, 1), np.float32), np.array([1] * 100 + [0] * (len(kinds) - 100)),
                   np.array(kinds), np.array(sources))
    folds = grouped_folds(data, 3, seed=0)
    fold_of = {s: int(folds[data.sources == s][0]) for s in sizes}
    assert fold_of["a"] != fold_of["b"] and fold_of["c"] != fold_of["d"] and fold_of["e"] != fold_of["f"]


def test_weights_balance_labels_and_kinds():
    data = toy_set()
    w = sample_weights(data)
    assert w[data.y == 0].sum() == pytest.approx(w[data.y == 1].sum())
    assert w[data.kinds == "ct"].sum() == pytest.approx(w[data.kinds == "mr"].sum())  # 30 vs 20+10 images
    assert w[data.kinds == "pediatric_cxr"].sum() == pytest.approx(w[data.kinds == "adult_cxr"].sum())


def test_boost_gives_a_kind_a_larger_share_of_its_label_only():
    data = toy_set()
    w = sample_weights(data, {"mr": 3.0})
    assert w[data.kinds == "mr"].sum() == pytest.approx(3 * w[data.kinds == "ct"].sum())
    assert w[data.y == 0].sum() == pytest.approx(w[data.y == 1].sum())  # the labels still weigh the same
    np.testing.assert_allclose(sample_weights(data, {}), sample_weights(data))


@pytest.mark.parametrize("bad", ["chest_lateral", "chest_lateral=", "=3", "chest_lateral=0", "chest_lateral=x"])
def test_boost_option_says_what_a_correct_value_looks_like(bad):
    with pytest.raises(SystemExit, match="KIND=FACTOR"):
        parse_boost([bad])
    assert parse_boost(["chest_lateral=4", "xray_hand=2"]) == {"chest_lateral": 4.0, "xray_hand": 2.0}


def test_threshold_refuses_at_most_one_percent_of_either_chest_population():
    rng = np.random.default_rng(0)
    data = toy_set(n_kids=1000)
    scores = np.where(data.y == 1, rng.uniform(0.3, 1.0, len(data)), rng.uniform(0.0, 0.5, len(data)))
    scores[data.kinds == "adult_cxr"] = np.linspace(0.05, 1.0, 20)  # adults score lower: they decide
    threshold = choose_gate_threshold(scores, data, max_refused=0.01)
    for kind in ("pediatric_cxr", "adult_cxr"):
        assert (scores[data.kinds == kind] < threshold).mean() <= 0.01
    assert threshold == pytest.approx(0.05)  # 20 adults: 1% allows none refused


def test_runtime_equivalence_counts_only_flips_that_make_a_figure_worse():
    data = toy_set(n_kids=4)  # 4 children, then 60 refuse-labelled (ct, mr), then 20 adults
    reference = np.where(data.y == 1, 0.9, 0.1)
    scores = reference.copy()
    scores[0] = 0.4  # a child float32 passes, refused: worse
    scores[4] = 0.6  # a CT float32 refuses, let through: worse
    reference[5], scores[5] = 0.6, 0.4  # an MR float32 lets through, refused: better
    found = runtime_equivalence(reference, scores, data, threshold=0.5)
    assert (found["decision_flips"], found["worse"]) == (3, 2)
    assert found["flips_by_kind"] == {"pediatric_cxr": 1, "ct": 2}
    assert found["max_abs_score_difference"] == pytest.approx(0.5)
    assert runtime_equivalence(reference, reference, data, 0.5)["decision_flips"] == 0


def test_synthetic_negatives_are_valid_images():
    rng = np.random.default_rng(0)
    films = rng.uniform(size=(3, 32, 32, 1)).astype(np.float32)
    negatives = synthetic_negatives(2, films, 32, seed=0)
    assert negatives.x.shape == (2 * len(SYNTHETIC_KINDS), 32, 32, 1)
    assert negatives.x.min() >= 0.0 and negatives.x.max() <= 1.0
    assert (negatives.y == 0).all() and set(negatives.kinds) == set(SYNTHETIC_KINDS)


@pytest.mark.slow
def test_tiny_gate_training_run_exports_a_loadable_artifact(tmp_path, gate_dir, xray_224_dir):
    data_root = gate_dir.parent
    store = tmp_path / "store"
    assert main(["--data", str(data_root), "--out", str(tmp_path / "run"), "--input-size", "32",
                 "--pediatric", "80", "--synthetic", "3", "--epochs", "1", "--folds", "2", "--store", str(store),
                 "--version", "3"]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    validation = report["validation"]
    assert validation["pediatric_refused_rate"] <= 0.0125 and validation["adult_refused_rate"] <= 0.0125
    assert set(validation["per_kind"]) >= {"fundus", "xray_spine", "adult_cxr", "pediatric_cxr", "blank"}
    loaded = load_artifact(store / "gate" / "3" / "model.h5")
    meta = loaded.metadata
    assert meta.class_names == ["other", "chest_radiograph"] and meta.positive_class == "chest_radiograph"
    assert meta.preprocessing.binarize == "none" and meta.preprocessing.input_size == 32
    assert meta.decision_threshold == pytest.approx(validation["threshold"])
    assert (store / "gate" / "3" / "report.json").is_file()
    # the reloaded model answers like the one the run scored with: same artifact, same numbers twice
    image = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48)
    x = preprocess(image, meta.preprocessing)[None]
    again = load_artifact(store / "gate" / "3" / "model.h5")
    np.testing.assert_allclose(np.asarray(loaded.model(x)), np.asarray(again.model(x)), atol=1e-6)

    # re-validating those weights under int8: the threshold and figures are kept only if int8 decides no image
    # worse than float32; the service then runs the gate as int8, the runtime the artifact names
    assert main(["--data", str(data_root), "--out", str(tmp_path / "int8"), "--input-size", "32",
                 "--pediatric", "80", "--synthetic", "3", "--epochs", "1", "--folds", "2", "--store", str(store),
                 "--score-runtime", "tflite-int8", "--weights-from", "3", "--version", "4"]) in (0, 1)
    int8_report = json.loads((tmp_path / "int8" / "report.json").read_text())
    checks = int8_report["runtime_equivalence"]
    assert checks["stored_weights_every_image"]["n"] == report["images"]
    if sum(part["worse"] for part in checks.values()):
        assert not (store / "gate" / "4").exists()  # refused: nothing exported
        return
    int8 = load_artifact(store / "gate" / "4" / "model.h5")
    assert int8.metadata.metrics["runtime"] == "tflite-int8"
    assert int8.metadata.decision_threshold == meta.decision_threshold
    assert int8.metadata.metrics["validation"] == meta.metrics["validation"]
    assert int8.metadata.provenance["weights_from"] == {"version": 3, "sha256": loaded.sha256}
    assert GateModel(int8, 4).runtime == "tflite-int8" and GateModel(loaded, 3).runtime == "tflite"
