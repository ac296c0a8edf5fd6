import numpy as np
import pytest
from conftest import write_image_folder as write_folder

from keras_finetune.image_folders import (
    class_folders,
    decode_image,
    image_files,
    load_image_folder,
    read_image_folder,
    undecodable_images,
)


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


def test_validation_folder_needs_the_training_classes(tmp_path):
    write_folder(tmp_path / "val", classes=("cat", "fox"))
    with pytest.raises(ValueError, match=r"--val must hold subfolders of the classes \['cat', 'dog'\]. Received: .* \['cat', 'fox'\]"):
        load_image_folder(str(tmp_path / "val"), 12, class_names=["cat", "dog"], argument="--val")


def test_a_folder_with_some_of_the_classes_gets_their_ids_by_name(tmp_path):
    write_folder(tmp_path / "val", classes=("dog", "owl"), per_class=2)
    folder = read_image_folder(str(tmp_path / "val"), "--data", ["cat", "dog", "owl"])
    assert folder.classes == ["cat", "dog", "owl"]
    np.testing.assert_array_equal(folder.labels, [1, 1, 2, 2])
    assert [p.split("/")[-2] for p in folder.paths] == ["dog", "dog", "owl", "owl"]


def test_the_split_holds_out_the_fraction_of_each_class_and_depends_on_the_seed_alone(tmp_path):
    write_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=10)
    write_folder(tmp_path / "data" / "c", classes=("more",), per_class=10)  # 20 images of c
    folder = read_image_folder(str(tmp_path / "data"))
    kept, held = folder.split(0.2, seed=3)
    assert np.bincount(held.labels).tolist() == [2, 2, 4] and np.bincount(kept.labels).tolist() == [8, 8, 16]
    assert sorted(kept.paths + held.paths) == sorted(folder.paths)
    assert folder.split(0.2, seed=3)[1].paths == held.paths and folder.split(0.2, seed=4)[1].paths != held.paths


def test_a_folder_too_small_to_split_is_refused(tmp_path):
    folder = write_folder(tmp_path / "data", per_class=1)
    with pytest.raises(ValueError, match="too small to hold out a fraction 0.2 for validation. Received: .* with 2 images"):
        load_image_folder(folder, 12, validation_split=0.2)


def test_undecodable_files_are_found_in_a_folder_or_a_list(tmp_path):
    folder = write_folder(tmp_path / "data", per_class=20)
    (tmp_path / "data" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "data" / "cat" / "empty.jpg").write_bytes(b"")
    broken = [str(tmp_path / "data" / "cat" / "empty.jpg"), str(tmp_path / "data" / "dog" / "broken.png")]
    assert undecodable_images(folder) == broken
    assert undecodable_images(read_image_folder(folder).paths) == broken


def test_images_decode_as_keras_loads_them(tmp_path):
    import keras

    folder = write_folder(tmp_path / "data", per_class=3, size=20)
    mine = np.stack([decode_image(path, 12, 3).numpy() for path in read_image_folder(folder).paths])
    theirs = keras.utils.image_dataset_from_directory(folder, image_size=(12, 12), shuffle=False, verbose=False)
    np.testing.assert_array_equal(mine, np.concatenate([x.numpy() for x, _ in theirs]))


def test_image_files_expands_folders_and_refuses_missing_paths(tmp_path):
    folder = write_folder(tmp_path / "data", per_class=2)
    single = str(tmp_path / "data" / "cat" / "0.png")
    assert image_files([single, str(tmp_path / "data" / "dog")]) == [
        single, str(tmp_path / "data" / "dog" / "0.png"), str(tmp_path / "data" / "dog" / "1.png")]
    assert len(image_files([folder])) == 4
    with pytest.raises(ValueError, match=r"IMAGE must be an image file or a folder. Received: '.*nope.png' \(no such file\)"):
        image_files([str(tmp_path / "nope.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="IMAGE holds no image"):
        image_files([str(tmp_path / "empty")])
