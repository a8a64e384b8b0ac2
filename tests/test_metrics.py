"""wsss.metrics against small hand-computed cases (the expected numbers are worked out in comments)."""
from __future__ import annotations

import argparse
import importlib.util
import json
import math

import numpy as np
import pytest
from scipy import ndimage

from wsss.io import save_label_png
from wsss.metrics import (
    BoundaryIoUMeter,
    ConfusionMeter,
    ContextFPMeter,
    ContourFMeter,
    ContourMassMeter,
    _disk_max,
    boundary_iou,
    boundary_iou_counts,
    confusion_matrix,
    context_false_positive_rate,
    contour_mass_inside,
    evaluate_folders,
    format_table,
    gt_boundaries,
    read_class_names,
    read_id_list,
    register,
    segmentation_scores,
)

# 4x4 hand case. 255 in gt = ignored (2 pixels), so 14 pixels count.
GT = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 255, 255],
        [2, 2, 2, 2],
    ],
    dtype=np.uint8,
)
PRED = np.array(
    [
        [0, 0, 1, 1],
        [0, 1, 1, 1],
        [2, 2, 0, 1],  # the 0 and 1 here sit on ignored gt pixels: not counted
        [2, 2, 2, 0],
    ],
    dtype=np.uint8,
)
# gt 0 (4 px) -> pred 0,0,0,1 ; gt 1 (4 px) -> pred 1,1,1,1 ; gt 2 (6 px) -> pred 2,2,2,2,2,0
CONF = np.array([[3, 1, 0], [0, 4, 0], [1, 0, 5]])


# ------------------------------------------------------------------ confusion matrix / IoU


def test_confusion_matrix_hand_case_ignores_255():
    conf = confusion_matrix(PRED, GT, 3)
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, CONF)
    assert conf.sum() == 14  # 16 pixels - 2 ignored


def test_segmentation_scores_hand_case():
    s = segmentation_scores(CONF, ["bg", "a", "b"])
    # row sums (gt) 4,4,6 ; column sums (pred) 4,5,5 ; diagonal 3,4,5
    # IoU0 = 3/(4+4-3) = 3/5 ; IoU1 = 4/(4+5-4) = 4/5 ; IoU2 = 5/(6+5-5) = 5/6
    assert s["iou"] == pytest.approx([0.6, 0.8, 5 / 6])
    assert s["per_class_iou"] == pytest.approx({"bg": 0.6, "a": 0.8, "b": 5 / 6})
    assert s["miou"] == pytest.approx((0.6 + 0.8 + 5 / 6) / 3)  # 0.744444
    assert s["pixel_acc"] == pytest.approx(12 / 14)
    # precision = diag / column sum: 3/4, 4/5, 5/5 ; recall = diag / row sum: 3/4, 4/4, 5/6
    assert s["precision"] == pytest.approx([0.75, 0.8, 1.0])
    assert s["recall"] == pytest.approx([0.75, 1.0, 5 / 6])
    # foreground = classes 1..K-1: fg_precision = (0.8 + 1.0)/2 = 0.9 ; fg_recall = (1 + 5/6)/2
    assert s["fg_precision"] == pytest.approx(0.9)
    assert s["fg_recall"] == pytest.approx(11 / 12)
    assert s["mean_acc"] == pytest.approx((0.75 + 1 + 5 / 6) / 3)


def test_absent_class_is_nan_and_left_out_of_miou():
    conf = confusion_matrix(PRED, GT, 4)  # class 3 absent from gt and pred
    s = segmentation_scores(conf)
    assert math.isnan(s["iou"][3]) and math.isnan(s["precision"][3]) and math.isnan(s["recall"][3])
    assert s["miou"] == pytest.approx((0.6 + 0.8 + 5 / 6) / 3)  # same as with 3 classes
    assert s["fg_precision"] == pytest.approx(0.9)


def test_class_only_predicted_gets_iou_zero():
    # gt all 0 (4 px), pred has one pixel of class 1: IoU1 = 0/(0+1-0) = 0, not NaN; recall1 NaN.
    gt = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 1], [0, 0]], np.uint8)
    s = segmentation_scores(confusion_matrix(pred, gt, 2))
    assert s["iou"] == pytest.approx([0.75, 0.0])  # IoU0 = 3/(4+3-3)
    assert s["miou"] == pytest.approx(0.375)
    assert s["precision"][1] == 0.0 and math.isnan(s["recall"][1])


def test_confusion_meter_accumulates():
    m = ConfusionMeter(3)
    m.update(PRED, GT)
    m.update(PRED, GT)
    np.testing.assert_array_equal(m.conf, 2 * CONF)
    assert m.scores()["miou"] == pytest.approx((0.6 + 0.8 + 5 / 6) / 3)


def test_confusion_out_of_range_prediction():
    pred = PRED.copy()
    pred[0, 0] = 7
    with pytest.raises(ValueError, match="7"):
        confusion_matrix(pred, GT, 3)
    # a prediction of 255 on an ignored gt pixel is fine
    pred = PRED.copy()
    pred[2, 2] = 255
    np.testing.assert_array_equal(confusion_matrix(pred, GT, 3), CONF)


def test_confusion_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        confusion_matrix(PRED[:, :3], GT, 3)


# ------------------------------------------------------------------ boundary IoU


def test_boundary_iou_square_shifted_by_one_pixel():
    # 10x10 image, diagonal 14.1 -> d = max(1, round(0.28)) = 1.
    gt = np.zeros((10, 10), np.uint8)
    gt[2:7, 2:7] = 1  # 5x5 square rows/cols 2..6
    pred = np.zeros_like(gt)
    pred[2:7, 3:8] = 1  # shifted right by one
    inter, union = boundary_iou_counts(pred, gt, 2)
    # class 1: each band = outer ring of the 5x5 = 25 - 9 = 16 px. Overlap: top and bottom rows share
    #   cols 3..6 (4 + 4); the vertical sides (cols 2,6 vs 3,7) do not -> 8. union = 16 + 16 - 8 = 24.
    # class 0: band = image frame (36 px, the border counts as boundary) + ring around the square
    #   (7x7 - 5x5 = 24 px) = 60 px each. Shared: frame 36 + rows 1 and 7 of the rings (cols 2..7,
    #   6 + 6) = 48. union = 60 + 60 - 48 = 72.
    np.testing.assert_array_equal(inter, [48, 8])
    np.testing.assert_array_equal(union, [72, 24])
    assert boundary_iou(pred, gt, 2) == pytest.approx((48 / 72 + 8 / 24) / 2)  # = 0.5


def test_boundary_iou_meter_accumulates_counts_not_means():
    gt = np.zeros((10, 10), np.uint8)
    gt[2:7, 2:7] = 1
    pred = np.zeros_like(gt)
    pred[2:7, 3:8] = 1
    m = BoundaryIoUMeter(2)
    m.update(pred, gt)  # inter [48, 8], union [72, 24]
    m.update(gt, gt)  # perfect: inter = union = [60, 16]
    s = m.scores()
    # class 0: (48+60)/(72+60) = 108/132 ; class 1: (8+16)/(24+16) = 24/40
    assert s["boundary_iou_per_class"] == pytest.approx([108 / 132, 24 / 40])
    assert s["boundary_iou"] == pytest.approx((108 / 132 + 24 / 40) / 2)


def test_boundary_iou_ignore_and_absent_class():
    gt = np.zeros((10, 10), np.uint8)
    gt[2:7, 2:7] = 1
    inter, union = boundary_iou_counts(gt, gt, 3)
    assert union[2] == 0  # class 2 nowhere -> NaN, excluded from the mean
    assert boundary_iou(gt, gt, 3) == pytest.approx(1.0)
    # Ignore the square's corner (2,2) in the gt: that pixel is counted in no band. The pred band
    # (ring of 16) keeps 15 valid pixels; the gt band loses the corner but gains (3,3), whose 3x3
    # neighbourhood now holds a non-1 (the 255): 15 + 1 = 16. inter = 15, union = 16.
    gt2 = gt.copy()
    gt2[2, 2] = 255
    inter2, union2 = boundary_iou_counts(gt, gt2, 3)
    assert (inter2[1], union2[1]) == (15, 16)


def _reference_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    # The Boundary IoU API's mask_to_boundary: pad 1 with zeros, erode d times with a 3x3 square.
    padded = np.pad(mask, 1)
    eroded = ndimage.binary_erosion(padded, np.ones((3, 3), bool), iterations=d)[1:-1, 1:-1]
    return mask & ~eroded


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boundary_iou_matches_reference_erosion(seed):
    rng = np.random.default_rng(seed)
    # blocky random label maps so that bands are non-trivial; 40x50 -> d = round(0.02*64.03) = 1;
    # ratio 0.05 -> d = 3
    for ratio, d in ((0.02, 1), (0.05, 3)):
        gt = np.kron(rng.integers(0, 4, (8, 10)), np.ones((5, 5), int)).astype(np.uint8)
        pred = np.kron(rng.integers(0, 4, (8, 10)), np.ones((5, 5), int)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.05] = 255
        valid = gt != 255
        inter, union = boundary_iou_counts(pred, gt, 4, dilation_ratio=ratio)
        for c in range(4):
            bp = _reference_boundary(pred == c, d) & valid
            bg = _reference_boundary(gt == c, d) & valid
            assert inter[c] == np.count_nonzero(bp & bg)
            assert union[c] == np.count_nonzero(bp | bg)


# ------------------------------------------------------------------ GT boundaries and contour F


def test_gt_boundaries_class_change_and_ignore_band():
    lab = np.array(
        [
            [0, 0, 1, 1],
            [0, 0, 1, 1],
            [0, 255, 2, 2],
        ],
        dtype=np.uint8,
    )
    b = gt_boundaries(lab)
    expected = np.array(
        [
            [0, 1, 1, 0],  # 0|1 change between cols 1 and 2 marks both sides
            [0, 1, 1, 1],  # same, plus (1,2),(1,3): class 1 above class 2 (vertical change)
            [0, 1, 1, 1],  # (2,1) is 255 (boundary itself; its 0 neighbours are not marked);
        ],  # (2,2),(2,3): class 2 below class 1
        dtype=bool,
    )
    np.testing.assert_array_equal(b, expected)


@pytest.mark.parametrize("use_cv2", [True, False])
def test_disk_max_matches_brute_force(use_cv2, monkeypatch):
    import wsss.metrics as wm

    if not use_cv2:
        monkeypatch.setattr(wm, "_cv2", None)
    rng = np.random.default_rng(0)
    x = rng.random((23, 31)).astype(np.float32)
    for radius in (1.0, 1.5, 2.9, 4.0):
        r = int(radius)
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        fp = yy**2 + xx**2 <= radius**2
        ref = ndimage.maximum_filter(x, footprint=fp, mode="constant", cval=-np.inf)
        np.testing.assert_array_equal(_disk_max(x, radius), ref)


def _square_outline(n: int = 64) -> np.ndarray:
    b = np.zeros((n, n), bool)
    b[10:51, 10] = b[10:51, 50] = b[10, 10:51] = b[50, 10:51] = True
    return b


def test_contour_f_perfect_prediction():
    gt = _square_outline()
    m = ContourFMeter()
    m.update(gt.astype(np.float32), gt)
    s = m.scores()
    assert s["ods_f"] == 1.0 and s["precision"] == 1.0 and s["recall"] == 1.0 and s["ois_f"] == 1.0


def test_contour_f_one_pixel_shift_is_within_tolerance():
    # 64x64: 0.0075 * 90.5 = 0.68 -> tolerance 1 px; every pixel of the shifted outline is 1 px
    # from the GT outline and vice versa -> P = R = F = 1.
    gt = _square_outline()
    m = ContourFMeter()
    m.update(np.roll(gt, 1, axis=1).astype(np.float32), gt)
    assert m.scores()["ods_f"] == 1.0


def test_contour_f_shift_beyond_tolerance_and_empty():
    gt = np.zeros((40, 40), bool)
    gt[:, 10] = True
    pred = np.zeros((40, 40), np.float32)
    pred[:, 15] = 1.0  # 5 px away, tolerance 2 px
    m = ContourFMeter(tolerance_px=2)
    m.update(pred, gt)
    s = m.scores()
    assert s["ods_f"] == 0.0 and s["precision"] == 0.0 and s["recall"] == 0.0
    m = ContourFMeter()
    m.update(np.zeros((40, 40), np.float32), gt)  # empty prediction: P := 0, R = 0, F = 0
    assert m.scores()["ods_f"] == 0.0 and m.scores()["ois_f"] == 0.0


def test_contour_f_hand_precision_recall_and_ods_threshold():
    # GT: column 10, rows 0..19 (20 px). Prediction: column 10 rows 0..9 at 0.8 (on GT) and a
    # spurious column 25 rows 0..9 at 0.25. Tolerance 1 px.
    gt = np.zeros((20, 30), bool)
    gt[:, 10] = True
    prob = np.zeros((20, 30), np.float32)
    prob[:10, 10] = 0.8
    prob[:10, 25] = 0.25
    m = ContourFMeter(tolerance_px=1)
    m.update(prob, gt)
    c = m.curve()
    t = m.thresholds
    # t <= 0.25: P = 10/20 = 0.5 ; GT rows 0..10 lie within 1 px of a prediction -> R = 11/20
    lo = t <= 0.25
    assert np.allclose(c["precision"][lo], 0.5) and np.allclose(c["recall"][lo], 0.55)
    # 0.25 < t <= 0.8: P = 10/10 = 1, R = 0.55 -> F = 2*0.55/1.55 = 0.709677
    mid = (t > 0.25) & (t <= 0.8)
    assert np.allclose(c["precision"][mid], 1.0) and np.allclose(c["f"][mid], 1.1 / 1.55)
    # t > 0.8: nothing predicted -> F = 0
    assert np.allclose(c["f"][t > 0.8], 0.0)
    s = m.scores()
    assert s["ods_f"] == pytest.approx(1.1 / 1.55)
    assert s["ods_threshold"] == pytest.approx(0.26)  # first threshold above 0.25
    assert s["precision"] == pytest.approx(1.0) and s["recall"] == pytest.approx(0.55)
    assert s["ois_f"] == pytest.approx(1.1 / 1.55)


def test_contour_f_ods_vs_ois_over_two_images():
    # Image A: the GT column is predicted at 0.3 only; image B: predicted at 0.9 only, plus a
    # false column at 0.5. Tolerance 0 px -> exact matches.
    gt = np.zeros((10, 10), bool)
    gt[:, 2] = True
    a = np.zeros((10, 10), np.float32)
    a[:, 2] = 0.3
    b = np.zeros((10, 10), np.float32)
    b[:, 2] = 0.9
    b[:, 7] = 0.5
    m = ContourFMeter(thresholds=[0.2, 0.4, 0.6], tolerance_px=0)
    m.update(a, gt)
    m.update(b, gt)
    # t=0.2: A P=1 R=1 ; B 20 predicted, 10 right, R=1 -> sums P=20/30, R=20/20 -> F=0.8
    # t=0.4: A nothing ; B P=10/20, R=1 -> P=10/20, R=10/20 -> F=0.5
    # t=0.6: A nothing ; B P=1, R=1 -> P=10/10, R=10/20 -> F=2/3
    s = m.scores()
    assert s["ods_f"] == pytest.approx(0.8) and s["ods_threshold"] == 0.2
    # OIS: A best at 0.2 (F=1), B best at 0.6 (F=1) -> summed counts give F = 1
    assert s["ois_f"] == pytest.approx(1.0)


# ------------------------------------------------------------------ contour mass inside


def test_contour_mass_inside_line_through_object_middle():
    # 12x12 label map, object (class 1) rows/cols 1..7. GT boundary = the object's outer ring plus
    # the background pixels 4-adjacent to it. band_px = 1 -> "inside" = object pixels farther than
    # 1 px from the boundary = rows/cols 3..5.
    lab = np.zeros((12, 12), np.uint8)
    lab[1:8, 1:8] = 1
    prob = np.zeros((12, 12), np.float32)
    prob[4, 1:8] = 1.0  # a contour drawn across the object's middle row
    prob[11, 11] = 0.5  # a stray background response far from everything
    r = contour_mass_inside(prob, lab, band_px=1)
    # row 4: cols 1 (boundary), 2 (within 1 px of it), 3..5 inside, 6 and 7 boundary
    # -> inside 3.0, boundary 4.0, background 0.5, total 7.5
    assert r["mass_inside"] == pytest.approx(3.0)
    assert r["mass_boundary"] == pytest.approx(4.0)
    assert r["mass_background"] == pytest.approx(0.5)
    assert r["share_inside"] == pytest.approx(3 / 7.5)
    assert r["share_boundary"] == pytest.approx(4 / 7.5)
    assert r["share_background"] == pytest.approx(0.5 / 7.5)
    assert r["intra_object_pixels"] == 3 and r["inside_pixels"] == 9
    # depth profile: (4, 3) and (4, 5) lie 2 px from the ring, (4, 4) 3 px
    deep = contour_mass_inside(prob, lab, band_px=1, depths_px=(1, 2, 3))
    assert deep["share_inside_beyond_1px"] == pytest.approx(3 / 7.5)
    assert deep["share_inside_beyond_2px"] == pytest.approx(1 / 7.5)
    assert deep["share_inside_beyond_3px"] == 0.0

    meter = ContourMassMeter(band_px=1, depths_px=(2,))
    meter.update(prob, lab)
    meter.update(np.zeros_like(prob), lab)  # no mass: shares unchanged
    s = meter.scores()
    assert s["share_inside"] == pytest.approx(0.4) and s["intra_object_pixels"] == 3 and s["n_images"] == 2
    assert s["share_inside_beyond_2px"] == pytest.approx(1 / 7.5)
    assert math.isnan(contour_mass_inside(np.zeros_like(prob), lab)["share_inside"])


# ------------------------------------------------------------------ context false positives


def test_context_false_positive_hand_case():
    pred = np.array([[1, 1, 0], [2, 0, 0], [0, 0, 0]], np.uint8)
    ctx = np.array([[1, 0, 1], [2, 2, 0], [0, 0, 255]], np.uint8)
    # context pixels (value 1..254): (0,0)=1 (0,2)=1 (1,0)=2 (1,1)=2 -> 4
    # FP: (0,0) predicted 1 -> yes ; (0,2) predicted 0 ; (1,0) predicted 2 -> yes ; (1,1) 0 -> 2
    assert context_false_positive_rate(pred, ctx) == (2, 4)
    m = ContextFPMeter()
    assert math.isnan(m.scores()["context_fp_rate"])
    m.update(pred, ctx)
    m.update(pred, np.zeros_like(ctx))  # no context at all in the second image
    assert m.scores() == {"context_fp_rate": 0.5, "context_fp_pixels": 2, "context_pixels": 4}


# ------------------------------------------------------------------ folder evaluation


def _write_case(root):
    pred_dir, gt_dir = root / "pred", root / "SegmentationClass"
    save_label_png(pred_dir / "a.png", PRED)
    save_label_png(gt_dir / "a.png", GT)
    save_label_png(pred_dir / "b.png", np.ones((2, 2), np.uint8))  # perfect: 4 more px of class 1
    save_label_png(gt_dir / "b.png", np.ones((2, 2), np.uint8))
    return pred_dir, gt_dir


# CONF + 4 px of class 1: [[3,1,0],[0,8,0],[1,0,5]] -> IoU = 3/5, 8/(8+9-8) = 8/9, 5/6
FOLDER_IOU = [0.6, 8 / 9, 5 / 6]


def test_evaluate_folders_hand_case(tmp_path):
    pred_dir, gt_dir = _write_case(tmp_path)
    s = evaluate_folders(pred_dir, gt_dir, progress=False)  # num_classes inferred: max gt 2 -> 3
    assert s["num_classes"] == 3 and s["n_images"] == 2
    assert s["iou"] == pytest.approx(FOLDER_IOU)
    assert s["miou"] == pytest.approx(sum(FOLDER_IOU) / 3)
    assert s["pixel_acc"] == pytest.approx(16 / 18)
    assert s["fg_precision"] == pytest.approx((8 / 9 + 1) / 2)  # precision1 = 8/9 (9 px predicted 1)
    assert 0 <= s["boundary_iou"] <= 1
    assert "context_fp_rate" not in s
    # explicit ids / class names / K, single-threaded path gives the same
    s2 = evaluate_folders(pred_dir, gt_dir, ids=["a", "b"], class_names=["bg", "x", "y"], progress=False, num_workers=1)
    assert s2["iou"] == pytest.approx(FOLDER_IOU) and s2["class_names"] == ["bg", "x", "y"]
    s4 = evaluate_folders(pred_dir, gt_dir, num_classes=4, progress=False)
    assert math.isnan(s4["iou"][3]) and s4["miou"] == pytest.approx(s["miou"])
    table = format_table(s4, ["bg", "x", "y", "z"])
    assert "z" in table and "mIoU" in table and f"{100 * s['miou']:6.2f}" in table


def test_evaluate_folders_context(tmp_path):
    pred_dir, gt_dir = _write_case(tmp_path)
    ctx = np.zeros((4, 4), np.uint8)
    ctx[0, 2] = 1  # predicted 1 -> FP
    ctx[3, 3] = 2  # predicted 0 -> fine
    save_label_png(tmp_path / "ctx" / "a.png", ctx)
    save_label_png(tmp_path / "ctx" / "b.png", np.zeros((2, 2), np.uint8))
    s = evaluate_folders(pred_dir, gt_dir, context_dir=tmp_path / "ctx", progress=False)
    assert (s["context_fp_rate"], s["context_fp_pixels"], s["context_pixels"]) == (0.5, 1, 2)


def test_evaluate_folders_errors(tmp_path):
    pred_dir, gt_dir = _write_case(tmp_path)
    with pytest.raises(FileNotFoundError, match="c.png"):
        evaluate_folders(pred_dir, gt_dir, ids=["a", "c"], progress=False)
    save_label_png(pred_dir / "b.png", np.ones((3, 2), np.uint8))
    with pytest.raises(ValueError, match=r"b\.png.*\(3, 2\).*\(2, 2\)"):
        evaluate_folders(pred_dir, gt_dir, progress=False)
    save_label_png(pred_dir / "b.png", np.full((2, 2), 9, np.uint8))
    with pytest.raises(ValueError, match=r"b\.png.*9"):  # inferred K = 3
        evaluate_folders(pred_dir, gt_dir, progress=False)
    with pytest.raises(ValueError, match=r"b\.png.*9"):  # explicit K = 5
        evaluate_folders(pred_dir, gt_dir, num_classes=5, progress=False)


def test_read_lists(tmp_path):
    (tmp_path / "val.txt").write_text("a\n\nb 1\n")
    assert read_id_list(tmp_path / "val.txt") == ["a", "b"]
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    assert read_class_names(tmp_path / "labels.txt") == ["background", "cat", "dog"]
    (tmp_path / "labels2.txt").write_text("background\ncat\n")
    assert read_class_names(tmp_path / "labels2.txt") == ["background", "cat"]


# ------------------------------------------------------------------ CLI


def _run_cli(argv: list[str]) -> int:
    if importlib.util.find_spec("wsss.data.synthvoc") is not None:
        from wsss.cli import main

        return main(argv)
    # wsss.cli imports a module not written yet: drive our own sub-command the same way.
    parser = argparse.ArgumentParser(prog="wsss")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def test_cli_eval_end_to_end(tmp_path, capsys):
    pred_dir, gt_dir = _write_case(tmp_path)
    (tmp_path / "labels.txt").write_text("cat\ndog\n")  # VOC layout: <root>/labels.txt
    (tmp_path / "save.txt").write_text("a\nb\n")
    out = tmp_path / "out" / "scores.json"
    rc = _run_cli(
        ["eval", "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--list", str(tmp_path / "save.txt"),
         "--json", str(out), "--no-progress"]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "cat" in text and "dog" in text and "mIoU" in text
    data = json.loads(out.read_text())
    assert data["class_names"] == ["background", "cat", "dog"]
    assert data["miou"] == pytest.approx(sum(FOLDER_IOU) / 3) and data["n_images"] == 2

    # explicit K with an absent class: NaN must come out as JSON null (strict JSON)
    rc = _run_cli(
        ["eval", "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--num-classes", "4",
         "--json", str(out), "--no-progress"]
    )
    assert rc == 0
    raw = out.read_text()
    assert "NaN" not in raw
    data = json.loads(raw)
    assert data["iou"][3] is None and data["num_classes"] == 4


def test_boundary_band_scipy_fallback_matches_opencv(monkeypatch):
    import wsss.metrics as wm

    rng = np.random.default_rng(3)
    gt = np.kron(rng.integers(0, 5, (12, 9)), np.ones((7, 7), int)).astype(np.uint8)
    pred = np.roll(gt, 2, axis=1)
    gt[rng.random(gt.shape) < 0.03] = 255
    fast = boundary_iou_counts(pred, gt, 5, dilation_ratio=0.03)
    monkeypatch.setattr(wm, "_cv2", None)
    slow = boundary_iou_counts(pred.astype(np.int64), gt.astype(np.int32), 5, dilation_ratio=0.03)
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])


def test_contour_scores_scipy_fallback_matches_opencv(monkeypatch):
    import wsss.metrics as wm

    rng = np.random.default_rng(5)
    lab = np.kron(rng.integers(0, 4, (9, 11)), np.ones((8, 8), int)).astype(np.uint8)
    gtb = gt_boundaries(lab)
    prob = ndimage.gaussian_filter(gtb.astype(np.float32), 1.5) * 2 + 0.2 * rng.random(lab.shape)
    prob = np.clip(prob, 0, 1).astype(np.float32)
    fast_f, fast_m = ContourFMeter(), contour_mass_inside(prob, lab)
    fast_f.update(prob, gtb)
    monkeypatch.setattr(wm, "_cv2", None)
    slow_f, slow_m = ContourFMeter(), contour_mass_inside(prob, lab)
    slow_f.update(prob, gtb)
    np.testing.assert_array_equal(fast_f.pred_matched, slow_f.pred_matched)
    np.testing.assert_array_equal(fast_f.gt_matched, slow_f.gt_matched)
    assert fast_f.scores() == slow_f.scores()
    assert fast_m == pytest.approx(slow_m)
    assert fast_f.pred_matched[0] > 0 and fast_f.pred_total[0] > fast_f.pred_matched[0]  # non-trivial case
