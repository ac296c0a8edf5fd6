import numpy as np
import pytest
from conftest import write_image_folder as write_folder

from keras_finetune.image_folders import class_folders, load_image_folder, undecodable_images


def test_classes_are_the_subfolders_with_images(tmp_path):
    folder = write_folder(tmp_path / "data", classes=("b", "a"))
    (tmp_path / "data" / "empty").mkdir()
    (tmp_path / "data" / "notes").mkdir()
    (tmp_path / "data" / "notes" / "readme.txt").write_text("not an image")
    assert class_folders(folder) == ["a", "b"]


@pytest.mark.parametrize("classes, message", [
    ((), "with none"),
    (("cat",), "with one, 'cat'"),
])
def test_fewer_than_two_classes_are_refused(tmp_path, classes, message):
    folder = tmp_path / "data"
    folder.mkdir()
    write_folder(folder, classes)
    with pytest.raises(ValueError, match=f"--data needs one subfolder of images per class, at least two. Received: .* {message}"):
        class_folders(str(folder))


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"--val must be a folder of class subfolders. Received: '.*nowhere' \(no such folder\)"):
        class_folders(str(tmp_path / "nowhere"), "--val")


def test_a_split_holds_out_the_fraction_and_labels_follow_the_classes(tmp_path):
    folder = write_folder(tmp_path / "data", per_class=10)
    train, held_out, classes = load_image_folder(folder, 12, batch_size=4, validation_split=0.2, seed=1)
    assert classes == ["cat", "dog"]
    images, labels = (np.concatenate(parts) for parts in zip(*((x.numpy(), y.numpy()) for x, y in held_out)))
    assert images.shape == (4, 12, 12, 3) and sum(len(y) for _, y in train) == 16
    # dog images are brighter: the label follows the folder
    np.testing.assert_array_equal(labels, (images.mean(axis=(1, 2, 3)) > 120).astype(int))


def test_validation_folder_needs_the_same_classes(tmp_path):
    write_folder(tmp_path / "val", classes=("cat", "fox"))
    with pytest.raises(ValueError, match=r"--val must have the training folder's classes \['cat', 'dog'\]. Received: .* \['cat', 'fox'\]"):
        load_image_folder(str(tmp_path / "val"), 12, class_names=["cat", "dog"], argument="--val")


def test_a_folder_too_small_to_split_is_refused(tmp_path):
    folder = write_folder(tmp_path / "data", per_class=1)
    with pytest.raises(ValueError, match="too small to hold out a fraction 0.2 for validation. Received: .* with 2 images"):
        load_image_folder(folder, 12, validation_split=0.2)


def test_undecodable_files_are_found(tmp_path):
    folder = write_folder(tmp_path / "data")
    (tmp_path / "data" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    assert undecodable_images(folder) == [str(tmp_path / "data" / "dog" / "broken.png")]
