# %% [markdown]
# # SANCE: segmentation-assisted noiseless contour exploration
#
# Li, Fan and Zhang (CVPR 2022) start where IRNet does: CAM seeds (Eq. 1: class where the
# normalized CAM exceeds 0.30, background below 0.05, unsure between, refined by a dense CRF;
# here the thresholds follow the CAM run's background threshold t* (chosen on train): t* + 0.15 and t* / 3,
# which is 0.30 / 0.05 at IRNet's VOC t* = 0.15 and 0.60 / 0.15 on SynthVOC quick)
# supervise a contour branch through inter-pixel affinities (Eqs. 2-4: `a_ij = (1 - max B on the
# path)^n` within a radius, class-balanced loss). Such contours also fire *inside* objects (part
# edges, two-tone textures) and stop the CAM's random walk there. SANCE adds
#
# - an auxiliary **segmentation branch** (ASPP) on the shared backbone, trained on the seeds;
# - **online labels**: the segmentation map propagated inside the contours (Eq. 6, delta=3, n=10,
#   t=8; the scale policy keeps the walk's reach: 1 step on 96 px images' 24-cell maps), absent classes zeroed, a constant background score, argmax (Eq. 7), which supervise both
#   branches; the **label refine module** (Eq. 8) lets a dense CRF of the segmentation map decide
#   background for the contour branch's online label (SANCE-naive: no refinement);
# - final pseudo labels from the segmentation map propagated with the contour map (delta=5, n=10,
#   t=8), multi-scale test-time augmentation (TTA). Sizes go through the scale policy
#   (`wsss.scale`): on SynthVOC's 96 px images the walk's map keeps 48 cells (1/2 resolution, the
#   contours from 2x upsampled input), its steps keep the paper's reach (t = 5) and scale 0.5 is
#   dropped; the paper's 1/4-resolution walk of 256 steps floods 24-cell maps.
#
# Paper, PASCAL VOC 2012 (Table 1, pseudo-label mIoU on *train*): baseline 66.6, SANCE-naive 69.9
# (CAM map) / 74.6 (seg map, stride 8), SANCE 75.7, SANCE+TTA 76.9. Contour F-measure on SBD val
# (Table 2): baseline 57.0, SANCE-naive 60.9, SANCE 62.4.
#
# On SynthVOC the phenomenon is planted: two-tone objects have intra-object colour edges, so a
# contour map trained from coarse seeds alone tends to put mass inside objects. We measure where
# the contour mass lies (`share_inside`) and the contour F-measure against ground-truth label
# boundaries, and the pseudo-label mIoU.

# %% tags=["parameters"]
preset = "quick"  # SynthVOC preset: tiny, quick or full
data_root = None  # a VOC-layout folder such as VOCdevkit/VOC2012, or None for SynthVOC
backbone = "small"  # small for CPU, resnet50 as IRNet
pretrained = None  # None: the preset's start (quick: "synthvoc"), "scratch", "imagenet" or a file
epochs = None  # None for the preset recipe
batch_size = None
lr = None
seed = 0
main_run = True  # train the main SANCE run with the preset recipe, the row notebook 07 compares
ablations = True  # also IRNet's contour baseline (also with a fine-tuned backbone), SANCE without refinement and without TTA (Tables 1-2)
ablation_epochs = None  # schedule of every Table 1 and 2 row, None for the preset recipe
ablation_split = None  # images the Table 1 and 2 rows train on with image labels and CAM seeds only, None for train
n_examples = 4
n_history = 4  # online-label snapshots shown per training image

# %%
from IPython.display import Markdown, display

from wsss import report, viz
from wsss.analysis.contours import contour_scores
from wsss.analysis.sance import example_contours, online_label_history, pseudo_label_scores
from wsss.data.voc import read_mask
from wsss.experiment import experiment_factory
from wsss.inference import load_cam
from wsss.stages.propagation import PseudoLabelParams, propagated_pseudo_labels

experiment = experiment_factory(preset, data_root=data_root, backbone=backbone, pretrained=pretrained, epochs=epochs,
                                batch_size=batch_size, lr=lr, seed=seed)
ablation = {"epochs": ablation_epochs, "train_split": ablation_split}  # the schedule of the Table 1 and 2 rows
cam = experiment("cam")  # stage 1, the run of notebook 01
main = experiment("sance")
runs = {**({"baseline": experiment("irn_contour", **ablation),
             "baseline (tuned backbone)": experiment("irn_contour", detach_contour=False, **ablation),
             "SANCE-naive": experiment("sance", refine=None, **ablation)} if ablations else {}),
        "SANCE": experiment("sance", **ablation)}
split = main.config.eval_split
schedule = (f"{ablation_epochs if ablation_epochs is not None else 'preset'} epochs on "
            f"{ablation_split or main.config.train_split}")
print("CAM run:", cam.run_dir.name)
print("SANCE run:", main.run_dir.name)

# %% [markdown]
# ## Training
#
# Both second stages start from the CAM network's backbone and train on its seeds. As in IRNet's code, the
# contour branch learns on detached backbone features: the baseline's backbone stays as the CAM
# network left it (IRNet freezes its ImageNet backbone), SANCE's learns from the segmentation loss
# alone (Eq. 5), which is how the segmentation branch reaches the contours. `baseline (tuned
# backbone)` lets the contour loss fine-tune the backbone too, not IRNet's recipe, as a reference. `loss` sums
# `contour_seed` and `seg_seed` (Eqs. 4, 5 on the CAM seeds) and, once online labels start
# (after 10% of training), `contour_online` and `seg_online`.

# %%
results = {"CAM": cam.train(), **({"SANCE (main)": main.train()} if main_run else {}),
           **{f"{name} ({schedule})": exp.train() for name, exp in runs.items()}}
display(Markdown(viz.markdown_table(report.speed_rows(results), ["run", "steps", "seconds", "images/s"])))
viz.save_figure(viz.plot_curves({name: exp.train_log() for name, exp in runs.items()},
                                keys=("loss", "contour_seed", "contour_online", "seg_online")), "04_sance_training");

# %% [markdown]
# ## Contour maps: contour-only baseline vs SANCE
#
# Flip-averaged contour maps of evaluation images (red: high). The baseline's contours (trained
# with `ablations`) follow every colour edge the seeds leave unsure; SANCE's should stay on object
# outlines.

# %%
ds = main.dataset(split)
indices = [i for i, _ in viz.pick_examples(ds, n_examples)]
contours = {name: example_contours(exp, indices) for name, exp in runs.items()}
grid = []
for j, i in enumerate(indices):
    raw = ds.load(i)
    grid.append({raw["id"]: raw["image"], "ground truth": viz.colorize(raw["mask"]),
                 **{name: viz.heat(contours[name][j]) for name in runs}})
viz.save_figure(viz.titled_grid(grid, class_names=ds.class_names, score_bar=True), "04_sance_contours");

# %% [markdown]
# ## Propagation results
#
# The baseline (with `ablations`) propagates the CAM with its single-scale contours, averaged with those of the
# flipped image (IRNet); SANCE propagates its segmentation map with its contours, averaged over
# scales and flips (TTA). Background scores are
# chosen on the train split, as for the CAM rows; `oracle mIoU` is val's own best, for reference.

# %%
maps = {**({"baseline: CAM walk": (runs["baseline"], PseudoLabelParams.for_run(runs["baseline"], "cam")),
            "SANCE-naive: seg walk": (runs["SANCE-naive"], PseudoLabelParams.for_run(runs["SANCE-naive"], "seg"))}
           if ablations else {}),
        "SANCE: seg walk": (runs["SANCE"], PseudoLabelParams.for_run(runs["SANCE"], "seg"))}
label_dirs = {name: propagated_pseudo_labels(exp, split, params) for name, (exp, params) in maps.items()}
cam_dir = cam.class_maps(split)
grid = []
for i in indices:
    raw = ds.load(i)
    _, cam_maps = load_cam(cam_dir / f"{raw['id']}.npz")
    cam_max = cam_maps.max(axis=0) if len(cam_maps) else raw["image"][..., 0] * 0.0
    grid.append({"CAM": viz.overlay(raw["image"], cam_max),
                 **{name: viz.colorize(read_mask(d / f"{raw['id']}.png")) for name, d in label_dirs.items()},
                 "ground truth": viz.colorize(raw["mask"])})
viz.save_figure(viz.titled_grid(grid, class_names=ds.class_names, score_bar=True), "04_sance_propagation");

# %% [markdown]
# ## Online labels over training
#
# For two training images of the SANCE run: the CAM seed (white: unsure), the online label Y^b
# (Eq. 7), the refined label Y^r (Eq. 8, background where the CRF of the segmentation map says
# so) and the contour map, at successive passes over the image.

# %%
model = runs["SANCE"].trained_method()
grid, labels = [], []
for index in sorted(model.snapshot_indices)[:2]:
    for shot in online_label_history(model, index, n_history):
        grid.append({"crop": shot["image"].numpy(), "seed": viz.colorize(shot["seed"].numpy()),
                     "online Y^b": viz.colorize(shot["online"].numpy()),
                     "refined Y^r": viz.colorize(shot["refined"].numpy()),
                     "contour": viz.heat(shot["boundary"].float().numpy())})
        labels.append(f"image {index}, {100 * shot['progress']:.0f}%")
if grid:
    viz.save_figure(viz.titled_grid(grid, row_labels=labels, class_names=ds.class_names, score_bar=True),
                    "04_sance_online_labels");

# %% [markdown]
# ## Table 1: pseudo labels
#
# Pseudo-label mIoU on the evaluation split. CAM rows: the CAM baseline's thresholded maps (the
# seeds' source, full recipe). Table rows: every second stage trained with the same schedule
# (`ablation_epochs` on `ablation_split`: the paper scores pseudo labels of the images the model
# trained on; the rows see image labels and CAM seeds only). "map" is what the contours propagate.

# %%
part = main.phenomena().get("part_defined", [])
contour = {name: contour_scores(exp) for name, exp in [*runs.items(), *((("SANCE (main)", main),) if main_run else ())]}
table1 = [  # variant, stage, scores, the run whose contours made them
    ("CAM", "cam", cam.evaluate(split), None),
    ("CAM + CRF", "cam", cam.evaluate(split, crf=True), None),
    *([(f"baseline, CAM map ({schedule})", "pseudo",
        pseudo_label_scores(runs["baseline"], PseudoLabelParams.for_run(runs["baseline"], "cam")), "baseline"),
       (f"baseline (tuned backbone), CAM map ({schedule})", "pseudo",
        pseudo_label_scores(runs["baseline (tuned backbone)"], PseudoLabelParams.for_run(runs["baseline (tuned backbone)"], "cam")),
        "baseline (tuned backbone)"),
       (f"SANCE-naive, CAM map ({schedule})", "pseudo",
        pseudo_label_scores(runs["SANCE-naive"], PseudoLabelParams.for_run(runs["SANCE-naive"], "cam")), "SANCE-naive"),
       (f"SANCE-naive, seg map ({schedule})", "pseudo",
        pseudo_label_scores(runs["SANCE-naive"], PseudoLabelParams.for_run(runs["SANCE-naive"], "seg", tta=False)),
        "SANCE-naive"),
       (f"SANCE, seg map ({schedule})", "pseudo",
        pseudo_label_scores(runs["SANCE"], PseudoLabelParams.for_run(runs["SANCE"], "seg", tta=False)), "SANCE")]
      if ablations else []),
    (f"SANCE + TTA ({schedule})", "pseudo", pseudo_label_scores(runs["SANCE"], PseudoLabelParams.for_run(runs["SANCE"], "seg")),
     "SANCE"),
]
if main_run:  # the method's own pseudo labels (its `pseudo_labels` hook), full recipe
    table1.append(("SANCE + TTA", "pseudo", pseudo_label_scores(main, PseudoLabelParams.for_run(main, "seg")),
                   "SANCE (main)"))
rows = [report.make_row(scores, variant=variant, stage=stage, part_classes=part,
                        **({"contour_f": contour[run]["ods_f"]} if run else {}))
        for variant, stage, scores, run in table1]
if main_run:
    rows[-1].update(train_s=results["SANCE (main)"].seconds, images_per_s=results["SANCE (main)"].images_per_s)
report.record([r for r in rows if r["method"] != "cam"]);

# %% [markdown]
# ## Table 2: contours
#
# Contour F-measure (ODS, OIS) of the flip-averaged contour maps against ground-truth label
# boundaries, and the shares of contour mass inside objects, on boundaries and in background
# (farther than 2 px from a boundary counts as inside). `beyond 4px` / `beyond 8px`: the share on
# object pixels farther than one / two cells of the 1/4-resolution contour map from a boundary,
# which leaves out the blurred fringe of a true contour. On small images also at the scale the
# final walk uses. Scale 1 gives 24-cell maps for 96 px images, where the blur of every
# true contour reaches past the 2 px band: the walk's scales are the fairer view of intra-object
# contours.

# %%
walk_scales = PseudoLabelParams.for_run(main, "seg", tta=False).contour_scales  # None: the maps' own scale
shares = ("ods_f", "ois_f", "share_inside", "share_inside_beyond_4px", "share_inside_beyond_8px", "share_boundary",
          "share_background")
contour_rows = [{"setting": name, **{k: c[k] for k in shares}} for name, c in contour.items()]
display(Markdown(viz.markdown_table(contour_rows, list(contour_rows[0]), percent=list(contour_rows[0])[1:])))
if walk_scales:  # the contours the final walk uses on small images
    print(f"contours at scale {', '.join(f'{s:g}' for s in walk_scales)}, as the final walk uses them:")
    walk_rows = [{"setting": name, **{k: contour_scores(exp, scales=walk_scales)[k] for k in shares}}
                 for name, exp in runs.items()]
    display(Markdown(viz.markdown_table(walk_rows, list(walk_rows[0]), percent=list(walk_rows[0])[1:])))

# %%
# NBVAL_CHECK_OUTPUT ignore: fg_precision
columns = ["variant", "bg_threshold", "miou", "fg_precision", "fg_recall", "boundary_iou", "part_recall", "contour_f"]
print(viz.markdown_table(rows, columns, percent=columns[2:]))
print()
print(viz.markdown_table(contour_rows, ["setting", *shares[:5]], percent=list(shares[:5])))

# %% [markdown]
# ## This run in the comparison
#
# The rows notebook 07 puts beside the other methods: class maps on val (threshold chosen on
# train) and the method's final pseudo masks on train, the masks a final network learns from.

# %%
from wsss import compare

if main_run:
    display(Markdown(compare.comparison_rows_table(main, part)))
