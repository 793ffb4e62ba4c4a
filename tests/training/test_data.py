from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from training.data import class_weights, load_folder_split, load_npz_split, stratified_split, undersample


def write_tree(root, counts):
    for name, n in counts.items():
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((20, 24), 40 * i % 255, np.uint8)).save(folder / f"img{i}.jpeg")
    return root


def test_folder_loader_reads_labels_and_skips_junk_with_a_report(tmp_path):
    root = write_tree(tmp_path, {"NORMAL": 3, "PNEUMONIA": 5})
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "train" / "PNEUMONIA" / "notes.txt").write_text("not an image")
    (root / "train" / "PNEUMONIA" / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "train" / "PNEUMONIA" / "subdir").mkdir()
    images = load_folder_split(root, "train")
    assert images.class_counts() == {"NORMAL": 3, "PNEUMONIA": 5}
    assert len(images.skipped) == 1 and "broken.jpeg" in images.skipped[0]
    assert images.image(0).shape == (20, 24) and images.image(0).dtype == np.uint8


def test_folder_loader_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        load_folder_split(tmp_path, "train")
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="PNEUMONIA"):
        load_folder_split(tmp_path, "train")


def test_npz_loader_reads_real_pneumoniamnist(mnist_npz):
    images = load_npz_split(mnist_npz, "val")
    assert len(images) == 270
    assert images.image(0).shape == (28, 28)
    assert set(np.unique(images.labels)) == {0, 1}


def test_stratified_split_keeps_class_shares_and_is_seeded():
    labels = np.array([0] * 100 + [1] * 300)
    keep, held = stratified_split(labels, 0.1, seed=3)
    assert len(held) == 40 and np.bincount(labels[held]).tolist() == [10, 30]
    assert not set(keep) & set(held) and len(keep) + len(held) == 400
    np.testing.assert_array_equal(held, stratified_split(labels, 0.1, seed=3)[1])
    assert not np.array_equal(held, stratified_split(labels, 0.1, seed=4)[1])


def test_undersample_draws_without_replacement_to_the_smallest_class():
    labels = np.array([0] * 10 + [1] * 30)
    chosen = undersample(labels, seed=1)
    assert np.bincount(labels[chosen]).tolist() == [10, 10]
    assert len(set(chosen.tolist())) == 20
    np.testing.assert_array_equal(chosen, undersample(labels, seed=1))


def test_class_weights_are_balanced():
    assert class_weights(np.array([0] * 10 + [1] * 30)) == {0: 2.0, 1: 40 / 60}
