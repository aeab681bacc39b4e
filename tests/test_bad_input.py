"""Every kind of broken input stops `data summary` early, names the file (and line), writes nothing."""

from __future__ import annotations

import pytest
from fakedata import make_ceph, make_hand, make_panoramic, write_png

HAND = "configs/data/hand_phantom.yaml"
CEPH = "configs/data/ceph_phantom.yaml"
PANO = "configs/data/panoramic_phantom.yaml"


def summary(cli, config, root, out, *extra):
    return cli(
        "data",
        "summary",
        "--config",
        config,
        "--data.init_args.root",
        root,
        "--data.init_args.image_size",
        "[32, 32]",
        "--out",
        out,
        *extra,
    )


def assert_refused(result, out, *fragments):
    code, _, err = result
    assert code != 0, "the command should have failed"
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert not out.exists(), "nothing may be written on failure"


def test_good_fake_datasets_load(cli, tmp_path):
    for config, root in (
        (HAND, make_hand(tmp_path / "h")),
        (CEPH, make_ceph(tmp_path / "c")),
        (PANO, make_panoramic(tmp_path / "p")),
    ):
        code, _, err = summary(cli, config, root, tmp_path / f"out-{root.name}")
        assert code == 0, err


def test_missing_root(cli, tmp_path):
    out = tmp_path / "out"
    assert_refused(summary(cli, HAND, tmp_path / "nowhere", out), out, "nowhere", "dataset root not found")


# ------------------------------------------------------------------------------------ hand


def _edit_csv_row(root, row: int, edit):
    csv = root / "setup/all.csv"
    lines = csv.read_text().splitlines()
    lines[row] = edit(lines[row])
    csv.write_text("\n".join(lines) + "\n")
    return csv


def test_hand_annotation_without_image(cli, tmp_path):
    root = make_hand(tmp_path / "d")
    (root / "images/1002.png").unlink()
    out = tmp_path / "out"
    assert_refused(summary(cli, HAND, root, out), out, "all.csv:2:", "has no image")


def test_hand_image_without_annotation(cli, tmp_path):
    root = make_hand(tmp_path / "d")
    write_png(root / "images/2000.png", 120, 100)
    (root / "setup/cv/set1/train.txt").write_text("1001\n2000\n")
    out = tmp_path / "out"
    assert_refused(summary(cli, HAND, root, out), out, "train.txt:2:", "2000.png has no annotation")


def test_hand_image_that_cannot_be_decoded(cli, tmp_path):
    root = make_hand(tmp_path / "d")
    (root / "images/1001.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    out = tmp_path / "out"
    assert_refused(summary(cli, HAND, root, out), out, "1001.png", "cannot")


def test_truncated_jpeg_is_refused(cli, tmp_path):
    """A JPEG cut short decodes without error (the decoder fills the rest with grey): it must be refused."""
    import cv2
    import numpy as np

    root = make_hand(tmp_path / "d")
    png = root / "images/1001.png"
    image = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    noise = np.random.default_rng(0).integers(0, 255, image.shape, dtype=np.uint8)  # incompressible content
    ok, encoded = cv2.imencode(".jpg", np.maximum(image, noise), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok and len(encoded) > 5000
    png.unlink()
    (root / "images/1001.jpg").write_bytes(encoded.tobytes()[:5000])
    import SimpleITK as sitk

    # the premise: the decoder itself returns an image for the truncated file
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(root / "images/1001.jpg"))).shape[:2] == image.shape
    out = tmp_path / "out"
    assert_refused(summary(cli, HAND, root, out), out, "1001.jpg", "truncated")


@pytest.mark.parametrize(
    "edit,fragments",
    [
        (lambda line: line.rsplit(",", 2)[0], ("all.csv:1:", "36 pairs")),
        (lambda line: line + ",5,5", ("all.csv:1:", "38 pairs")),
        (lambda line: line.replace(",", ",abc,", 1).rsplit(",", 1)[0], ("all.csv:1:", "'abc' is not a number")),
        (lambda line: line.replace(",", ",nan,", 1).rsplit(",", 1)[0], ("all.csv:1:", "not finite")),
        (lambda line: line.split(",", 1)[0] + ",500," + line.split(",", 2)[2], ("all.csv:1:", "outside the image")),
    ],
)
def test_hand_bad_annotation_rows(cli, tmp_path, edit, fragments):
    root = make_hand(tmp_path / "d")
    _edit_csv_row(root, 0, edit)
    out = tmp_path / "out"
    assert_refused(summary(cli, HAND, root, out), out, *fragments)


def test_hand_split_list_with_unknown_id(cli, tmp_path):
    root = make_hand(tmp_path / "d")
    (root / "setup/cv/set1/test.txt").write_text("1003\n\n9999\n")
    out = tmp_path / "out"
    assert_refused(summary(cli, HAND, root, out), out, "test.txt:3:", "unknown id 9999")


def test_empty_dataset(cli, tmp_path):
    root = make_hand(tmp_path / "d")
    (root / "setup/cv/set1/train.txt").write_text("")
    (root / "setup/cv/set1/test.txt").write_text("\n")
    out = tmp_path / "out"
    assert_refused(summary(cli, HAND, root, out), out, "dataset is empty")


# ------------------------------------------------------------------------------- cephalometric


def test_ceph_image_with_only_one_doctor(cli, tmp_path):
    root = make_ceph(tmp_path / "d")
    (root / "AnnotationsByMD/400_junior/002.txt").unlink()
    out = tmp_path / "out"
    assert_refused(summary(cli, CEPH, root, out), out, "002.png", "400_junior/002.txt", "mean needs both")


def test_ceph_annotation_without_image(cli, tmp_path):
    root = make_ceph(tmp_path / "d", ids=("001", "002", "003"))
    (root / "RawImage/TrainingData/003.png").unlink()
    out = tmp_path / "out"
    assert_refused(summary(cli, CEPH, root, out), out, "003.txt", "has no image")


@pytest.mark.parametrize(
    "content,fragments",
    [
        ("1,2\n" * 18, ("001.txt:18:", "found only 18")),
        ("1,2\n" * 5 + "1,2,3\n" + "1,2\n" * 13, ("001.txt:6:", "expected 'x,y'")),
        ("1,2\n" * 5 + "1,x\n" + "1,2\n" * 13, ("001.txt:6:", "'x' is not a number")),
        ("1,2\n" * 5 + "nan,2\n" + "1,2\n" * 13, ("001.txt:6:", "not finite")),
        ("1,2\n" * 7 + "1,200\n" + "1,2\n" * 11, ("001.txt:8:", "landmark 7", "outside the image")),
    ],
)
def test_ceph_bad_annotation_files(cli, tmp_path, content, fragments):
    root = make_ceph(tmp_path / "d")
    (root / "AnnotationsByMD/400_senior/001.txt").write_text(content)
    out = tmp_path / "out"
    assert_refused(summary(cli, CEPH, root, out), out, *fragments)


def test_ceph_missing_test_folders_are_empty_splits(cli, tmp_path):
    root = make_ceph(tmp_path / "d")
    code, stdout, err = summary(cli, CEPH, root, tmp_path / "out")
    assert code == 0, err
    assert '"test": 0' in stdout and '"val": 0' in stdout and '"train": 2' in stdout


# ----------------------------------------------------------------------------------- panoramic


def test_panoramic_mask_size_differs_from_image(cli, tmp_path):
    root = make_panoramic(tmp_path / "d")
    write_png(root / "masks/b.png", 41, 80)
    out = tmp_path / "out"
    assert_refused(summary(cli, PANO, root, out), out, "masks/b.png", "differs from image")


def test_panoramic_image_without_mask(cli, tmp_path):
    root = make_panoramic(tmp_path / "d")
    (root / "masks/c.png").unlink()
    out = tmp_path / "out"
    assert_refused(summary(cli, PANO, root, out), out, "images/c.png", "has no mask")


# ------------------------------------------------------------------------ ids, formats, classes


@pytest.mark.parametrize(
    "config,make,folder,stem",
    [(HAND, make_hand, "images", "1001"), (CEPH, make_ceph, "RawImage/TrainingData", "002"),
     (PANO, make_panoramic, "images", "a")],
    ids=["hand", "ceph", "panoramic"],
)  # fmt: skip
def test_two_images_with_one_id_are_refused_naming_both(cli, tmp_path, config, make, folder, stem):
    root = make(tmp_path / "d")
    write_png(root / folder / f"{stem}.jpg", 30, 30)  # beside <stem>.png
    out = tmp_path / "out"
    assert_refused(summary(cli, config, root, out), out, f"two images with the id {stem}", f"{stem}.png", f"{stem}.jpg")


def test_a_file_is_read_by_its_signature_not_its_extension(cli, tmp_path):
    import cv2
    import numpy as np

    from xraydiff.data.imageio import read_image

    root = make_hand(tmp_path / "d")
    images = root / "images"
    expected = {k: cv2.imread(str(images / f"{k}.png"), cv2.IMREAD_GRAYSCALE) for k in ("1001", "1002")}
    (images / "1001.png").rename(images / "1001.jpg")  # a PNG named .jpg
    ok, jpeg = cv2.imencode(".jpg", expected["1002"], [cv2.IMWRITE_JPEG_QUALITY, 100])
    (images / "1002.png").write_bytes(jpeg.tobytes())  # a JPEG named .png
    np.testing.assert_array_equal(read_image(images / "1001.jpg"), expected["1001"])
    assert np.abs(read_image(images / "1002.png") - expected["1002"]).max() <= 8  # lossy, but the same picture
    code, _, err = summary(cli, HAND, root, tmp_path / "out")
    assert code == 0, err
    (images / "1003.png").write_text("id,x,y\n")  # no image at all
    out = tmp_path / "out2"
    assert_refused(summary(cli, HAND, root, out), out, "1003.png: not a PNG file", "no image signature")


def test_panoramic_masks_without_the_configured_classes(cli, tmp_path):
    import numpy as np
    import SimpleITK as sitk

    root = make_panoramic(tmp_path / "d", stems=("a", "b", "c", "d", "e"))
    fdi = ["--data.init_args.classes", "[36, 37, 38]", "--data.init_args.test_fraction", "0.2",
           "--data.init_args.val_fraction", "0.2"]  # fmt: skip
    empty = np.zeros((40, 80), np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(empty), str(root / "masks/b.png"))
    code, _, err = summary(cli, PANO, root, tmp_path / "out", *fdi)
    assert code == 0, err
    assert "masks/b.png: no pixel of classes [36, 37, 38] (values found: 0)" in err
    for stem in "abcde":  # 0/255 masks under FDI classes: every target empty
        binary = np.zeros((40, 80), np.uint8)
        binary[10:20, 10:30] = 255
        sitk.WriteImage(sitk.GetImageFromArray(binary), str(root / "masks" / f"{stem}.png"))
    out = tmp_path / "out2"
    assert_refused(summary(cli, PANO, root, out, *fdi), out, "no training mask holds a pixel of classes [36, 37, 38]",
                   "the masks hold the values 0, 255")  # fmt: skip
