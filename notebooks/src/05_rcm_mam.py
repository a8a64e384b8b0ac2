# %% [markdown]
# # RCM + MAM: pixel-level self-supervision from an EMA SupportNet
#
# Yoon, Kweon et al. (2022) train the CAM network (the *MainNet*) with two extra losses whose
# targets come from a *SupportNet* of the same structure that only follows the MainNet by an
# exponential moving average (alpha = 0.997). Both networks see the image at scales 0.5, 1.0 and
# 2.0 (the scale policy, `wsss.scale`, drops 0.5 on 96 px images, where its map would be 6 cells
# wide); a 1x1 feature head (D = 256) sits before the classifier.
#
# - **Regional Contrastive Module (RCM)**, against *impreciseness*: the SupportNet's multi-scale
#   CAM, thresholded at 0.20 and argmaxed over the present classes, gives class region masks
#   (background where no class wins); masked means of SupportNet features give one prototype per
#   class and background, averaged over the batch (a class missing from the batch keeps its latest
#   prototype). Every MainNet pixel feature is pulled to its region's prototype and pushed from the
#   others (InfoNCE, temperature 0.5).
# - **Multi-scale Attentive Module (MAM)**, against *sparseness*: the cosine distances
#   xi_ij = 2 - cos(A_i^Main, A_j^Support) between the scales' CAMs weight the SupportNet CAMs into
#   one target per scale, (1/3) sum_j xi_ij A_j^Support, which the MainNet CAMs regress (L1). It is
#   switched on after a warm-up (the paper: epoch 6 of 20, here 30 % of the schedule).
#
# Paper, PASCAL VOC 2012 train, CAM mIoU / precision / recall (%) (Table 2): baseline 48.4 / 60.8 /
# 72.0, RCM 57.6 / 72.3 / 74.0, MAM 58.0 / 70.6 / 77.1, both 63.7 / 75.8 / 79.6; with CRF (Table 1)
# 54.4 baseline, 62.8 RCM, 63.4 MAM, 67.7 both. So RCM should mostly raise precision, MAM recall,
# and both together mIoU.
#
# On a backbone trained from scratch (the `small` CPU net), the SupportNet's CAMs of present classes
# are often all zero for the first epochs; the paper's ImageNet-initialized networks localize from the
# start. So, where a present class gets no region, RCM ignores that image's background (it would
# teach the missed object as background), and MAM skips classes the SupportNet sees at no scale
# (their target would be all zero). The EMA also starts with Mean Teacher's ramp
# (alpha_t = min(0.997, 1 - 1/(t + 1))) so that the SupportNet does not keep its random weights for
# the first few hundred steps of a 744-step run.
#
# Cost: the MainNet runs forward and backward on three scales (0.25 + 1 + 4 = 5.25 times the
# pixels of one) and the SupportNet forward on the same three, so a step costs several CAM steps.

# %% tags=["parameters"]
preset = "quick"  # SynthVOC preset: tiny, quick or full
data_root = None  # a VOC-layout folder (e.g. VOCdevkit/VOC2012), None: SynthVOC
backbone = "small"  # small (CPU), resnet18, resnet50, resnet101
pretrained = None  # None: the preset's start (quick: "synthvoc"), "scratch", "imagenet" or a file
epochs = None  # None: the recipe of the preset
batch_size = None
lr = None
seed = 0
crf = True  # also report CAM + dense CRF
ablations = True  # train the Table 1-2 rows (RCM alone, MAM alone) and a baseline at their schedule
ablation_epochs = 1  # schedule of all four ablation rows, None: the schedule of the main runs
n_examples = 6

# %%
import numpy as np
from IPython.display import Markdown, display

from wsss import report, viz
from wsss.analysis.baseline import threshold_sweeps, versus_baseline
from wsss.analysis.rcm_mam import ABLATION_ROWS, explain
from wsss.experiment import Experiment, experiment_factory

experiment = experiment_factory(preset, data_root=data_root, backbone=backbone, pretrained=pretrained,
                                epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)


def rcm_mam_experiment(rcm: bool = True, mam: bool = True, epochs=epochs) -> Experiment:
    """Both modules off is the CAM baseline; only options that differ from the defaults are passed,
    so the full method is the main run (`method="rcm_mam"`, no options) that 07_compare reuses."""
    if not (rcm or mam):
        return experiment("cam", epochs=epochs)
    off = {k: False for k, on in (("rcm", rcm), ("mam", mam)) if not on}
    return experiment("rcm_mam", epochs=epochs, **off)


exp = rcm_mam_experiment()
# The CAM baseline on the main run's schedule (the quick recipe of rcm_mam is shorter than CAM's).
baseline = rcm_mam_experiment(False, False, epochs=exp.config.train.epochs)
print("CAM run:", baseline.run_dir.name)
print("RCM + MAM run:", exp.run_dir.name)

# %% [markdown]
# ## Training

# %%
base_result, result = baseline.train(), exp.train()
results = {"CAM": base_result, "RCM + MAM": result}
display(Markdown(viz.markdown_table(report.speed_rows(results), ["run", "steps", "seconds", "images/s"])))
print(f"RCM + MAM trains {base_result.images_per_s / result.images_per_s:.1f}x slower than CAM per image")
viz.save_figure(viz.plot_curves({"CAM": baseline.train_log(), "RCM + MAM": exp.train_log()},
                                keys=("loss", "cls", "rcm", "mam")), "05_rcm_mam_training");

# %% [markdown]
# `cls`: image labels from the MainNet at scale 1.0; `rcm`: the regional contrastive loss; `mam`:
# the L1 loss to MAM's targets (0 during its warm-up). The CAM run's `loss` is its classification
# loss.
#
# ## Background threshold sweep

# %%
threshold_sweeps({"CAM": baseline, "RCM + MAM": exp}, "05_rcm_mam_sweep");

# %% [markdown]
# ## Metrics (CAM pseudo masks on the evaluation split)

# %%
part = exp.phenomena().get("part_defined", [])
rows, scores = versus_baseline({"CAM": baseline, "RCM + MAM": exp}, results, crf, part)

# %%
# NBVAL_CHECK_OUTPUT
columns = ["variant", "bg_threshold", "miou", "fg_precision", "fg_recall", "boundary_iou", "context_fp_rate",
           "part_recall"]
print(viz.markdown_table(rows, columns, percent=columns[2:]))

# %%
per_class = report.per_class_rows(scores, ("iou", "precision", "recall"), exp.phenomena())
display(Markdown(viz.markdown_table(per_class, list(per_class[0]), percent=list(per_class[0])[1:-1])))

# %% [markdown]
# ## RCM: class region masks and prototype similarity
#
# Each row: the image, the SupportNet's multi-scale CAM of one present class, the class region
# masks it gives (threshold 0.20, argmax over present classes, background elsewhere), the MainNet's
# prototype assignment (softmax over the stored background and present-class prototypes at
# temperature 0.5) for the class and for background, and the ground truth.

# %%
model, ds = exp.trained_method(), exp.dataset(exp.config.eval_split)
examples = []
for index, c in viz.pick_examples(ds, n_examples):
    sample = ds[index]
    examples.append((ds.load(index), c, explain(model, sample["image"].to(exp.device), sample["label"])))

grid = []
for raw, c, ex in examples:
    k, name, image = list(ex["keys"]).index(c), exp.class_names[c], raw["image"]
    grid.append({raw["id"]: image, f"SupportNet msinf: {name}": viz.overlay(image, ex["support_msinf"][k]),
                 "class regions": viz.colorize(ex["regions"]),
                 f"prototype: {name}": viz.overlay(image, ex["similarity"][k + 1]),
                 "prototype: background": viz.overlay(image, ex["similarity"][0]),
                 "ground truth": viz.colorize(raw["mask"])})
viz.save_figure(viz.titled_grid(grid, class_names=exp.class_names, score_bar=True), "05_rcm_regions");

# %% [markdown]
# ## MAM: CAMs at each scale and their weights
#
# For each example, the MainNet CAM of one class at each of MAM's scales (resized to scale 1,
# max-normalized), the SupportNet CAMs at the same scales, and MAM's target per scale. The title of
# each target gives its weights xi_ij over the SupportNet scales j (1 = the same map, 2 =
# orthogonal maps).

# %%
scale_names = [f"{s:g}" for s in model.scales]
grid, weights = [], []
for raw, c, ex in examples:
    k = list(ex["keys"]).index(c)
    image, xi = raw["image"], ex["distances"][k]
    maps = {"MainNet": ex["main_cams"][:, k], "SupportNet": ex["support_cams"][:, k]}
    row = {f"{net} x{s}": viz.overlay(image, m[i]) for net, m in maps.items() for i, s in enumerate(scale_names)}
    row.update({f"target x{s}: " + "/".join(f"{w:.2f}" for w in xi[i]): viz.overlay(image, np.clip(t, 0, 1))
                for i, (s, t) in enumerate(zip(scale_names, ex["targets"][:, k]))})
    grid.append(row)
    weights.append(xi)
viz.save_figure(viz.titled_grid(grid, row_labels=[exp.class_names[c] for _, c, _ in examples], score_bar=True),
                "05_mam_scales")
mean_xi = np.mean(weights, axis=0)
display(Markdown("Mean MAM weight xi over the examples (rows: MainNet scale i, columns: SupportNet scale j)\n\n"
                 + viz.markdown_table([{"i": s, **{f"j={t}": float(mean_xi[a, b]) for b, t in enumerate(scale_names)}}
                                       for a, s in enumerate(scale_names)], ["i", *[f"j={t}" for t in scale_names]])))

# %% [markdown]
# ## Ablation (the paper's Tables 1 and 2)
#
# The same method with a module switched off; "baseline" (both off) is the CAM baseline. All four
# rows share one schedule (`ablation_epochs`; shorter than the main runs above by default, to keep
# the notebook's cost down, so compare rows only within this table). Precision and recall are
# foreground precision and recall at each row's best background threshold, as in Table 2.

# %%
ablation = []
if ablations:
    abl_epochs = ablation_epochs if ablation_epochs is not None else epochs
    for name, rcm, mam in ABLATION_ROWS:
        run = rcm_mam_experiment(rcm, mam, epochs=abl_epochs)
        r, s = run.train(), run.evaluate()
        row = report.make_row(s, variant=f"Tables 1-2: {name} ({run.config.train.epochs} ep)", stage="cam",
                              part_classes=part, train_s=r.seconds, images_per_s=r.images_per_s)
        ablation.append({**row, "row": name, "Baseline": "✓", "RCM": "✓" if rcm else "", "MAM": "✓" if mam else "",
                         "schedule": f"{run.config.train.epochs} ep, {r.steps} steps"})
    for row in ablation:
        for key in ("miou", "fg_precision", "fg_recall"):
            row[f"Δ {key}"] = row[key] - ablation[0][key]
    report.record(ablation)

# %%
# NBVAL_CHECK_OUTPUT
columns = ["Baseline", "RCM", "MAM", "schedule", "bg_threshold", "miou", "Δ miou", "fg_precision",
           "Δ fg_precision", "fg_recall", "Δ fg_recall"]
print(viz.markdown_table(ablation, columns, percent=columns[5:]) if ablation else "ablations = False")

# %%
if ablation:
    display(Markdown(viz.markdown_table(ablation, ["row", "train_s", "images_per_s"])))

# %% [markdown]
# ## Pseudo labels: the random walk (Sec. 4.4)
#
# The paper propagates its CAMs by a random walk before training the segmentation network (71.0
# mIoU on VOC train). Here the walk is the workbench's shared one (IRNet's contours and
# propagation, as in notebook 04): a contour run is seeded by the run's own class maps and
# propagates them; its background score is chosen on train. These are the method's pseudo masks
# (what 07_compare scores and the final network learns from). With `ablations`, the CAM baseline's
# maps walked the same way give the reference.

# %%
walk_runs = {"RCM + MAM": exp, **({"CAM": baseline} if ablations else {})}
walk_rows = []
for name, run in walk_runs.items():
    split = run.config.train_split
    plain = run.evaluate_masks(run.pseudo_masks(split), split)
    if run is exp:
        walked = run.evaluate_masks(run.final_pseudo_masks(split), split)
    else:  # the CAM run's maps through a contour run seeded by them, as RCM + MAM's are
        contour = experiment("irn_contour", cam_options={"epochs": run.config.train.epochs})
        walked = contour.evaluate_masks(contour.final_pseudo_masks(split), split)
    walk_rows.append({"run": name, "thresholded class maps": plain["miou"], "random walk": walked["miou"],
                      "Δ": walked["miou"] - plain["miou"]})

# %%
# NBVAL_CHECK_OUTPUT
print(viz.markdown_table(walk_rows, ["run", "thresholded class maps", "random walk", "Δ"],
                         percent=["thresholded class maps", "random walk", "Δ"]))

# %% [markdown]
# ## This run in the comparison
#
# The rows notebook 07 puts beside the other methods: class maps on val (threshold chosen on
# train) and the method's final pseudo masks on train, the masks a final network learns from.

# %%
from wsss import compare

display(Markdown(compare.comparison_rows_table(exp, part)))
