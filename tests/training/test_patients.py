"""Patient keys from Kermany names, and a validation split that never shares a patient with training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data import load_folder_split
from training.patients import grouped_split, patient_groups, patient_key
from training.train import TrainConfig, make_splits


@pytest.mark.parametrize(("name", "key"), [
    ("person1000_bacteria_2931.jpeg", "person:1000"),
    ("person1000_virus_1681.jpeg", "person:1000"),  # one child, bacterial and viral films
    ("person447_virus_921_1.jpeg", "person:447"),
    ("train/PNEUMONIA/PERSON12_BACTERIA_3.JPEG", "person:12"),
    ("IM-0115-0001.jpeg", "IM:115"),
    ("IM-0115-0002.jpeg", "IM:115"),
    ("NORMAL2-IM-0115-0001.jpeg", "NORMAL2-IM:115"),  # another series: not the same child as IM-0115
    ("scan.png", "file:scan.png"),
    ("person_bacteria_1.jpeg", "file:person_bacteria_1.jpeg"),
    ("IM-12.jpeg", "file:IM-12.jpeg"),
])
def test_patient_key(name, key):
    assert patient_key(name) == key


def test_unrecognised_names_are_each_their_own_group():
    paths = [Path(n) for n in ("a.png", "b.png", "person3_virus_1.jpeg", "person3_bacteria_7.jpeg", "a.png")]
    groups = patient_groups(paths, len(paths))
    assert groups[0] != groups[1] and groups[2] == groups[3] and groups[0] == groups[4]
    np.testing.assert_array_equal(patient_groups(None, 4), np.arange(4))  # arrays without names


def _synthetic(n_patients: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    films = rng.integers(1, 5, size=n_patients)
    groups = np.repeat(np.arange(n_patients), films)
    labels = np.repeat((np.arange(n_patients) % 4 != 0).astype(np.int64), films)  # about 1:3
    return labels, groups


def test_grouped_split_keeps_patients_whole_stratified_and_seeded():
    labels, groups = _synthetic(800)
    keep, held = grouped_split(labels, groups, 0.1, seed=3)
    assert not set(groups[keep]) & set(groups[held])
    assert len(keep) + len(held) == len(labels) and not set(keep) & set(held)
    assert 0.07 < len(held) / len(labels) < 0.13
    assert abs(labels[held].mean() - labels.mean()) < 0.03
    np.testing.assert_array_equal(held, grouped_split(labels, groups, 0.1, seed=3)[1])
    assert not np.array_equal(held, grouped_split(labels, groups, 0.1, seed=4)[1])
    with pytest.raises(ValueError, match="fraction"):
        grouped_split(labels, groups, 0.0, seed=3)


def test_no_patient_is_in_both_train_and_validation_on_the_real_training_split(xray_224_dir):
    images = load_folder_split(xray_224_dir, "train", check=False)  # names only; nothing decoded
    for balance in ("undersample", "class-weight"):
        splits = make_splits(images, TrainConfig(balance=balance, val_fraction=0.1, seed=1337))
        train_keys = {patient_key(str(p)) for p in splits.train.paths}
        val_keys = {patient_key(str(p)) for p in splits.val.paths}
        assert not train_keys & val_keys
        assert splits.patients["val"] == len(val_keys) > 200
        counts = splits.val.class_counts()
        assert 0.08 < len(splits.val) / len(images) < 0.12
        assert abs(counts["PNEUMONIA"] / len(splits.val) - 3875 / 5216) < 0.03
    # the image-level split of v1 does share children: the reason for the grouped split
    by_image = make_splits(images, TrainConfig(split="image", balance="none", val_fraction=0.1, seed=1337))
    assert {patient_key(str(p)) for p in by_image.train.paths} & {patient_key(str(p)) for p in by_image.val.paths}
