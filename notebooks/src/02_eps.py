# %% [markdown]
# # EPS: saliency as pseudo-pixel supervision
#
# Lee, Lee, Lee and Shim (CVPR 2021) give the classifier C + 1 localization maps (a softmax over
# the C object classes and a background class at every location) and train it with two losses:
#
# - **Classification** on the C object classes only (GAP of their scores, multi-label soft margin);
#   the background map gets no gradient from it.
# - **Saliency**: the estimated saliency lambda M_fg + (1 - lambda)(1 - M_bg) (lambda = 0.5) must
#   match a given saliency map (mean squared difference). *Map selection* decides per image and
#   class: a present class's map joins the foreground M_fg if more than tau = 0.4 of its pixels
#   (maps binarized at 0.5) are salient, else it joins the background map M_bg. Classes the
#   saliency detector misses then still train, as background of the saliency loss.
#
# Deviations from the authors' code (all listed in `wsss/methods/eps.py`): a map with no pixel
# above 0.5 has an undefined overlap and goes to neither side (the authors' epsilon sends it to the
# background). From ImageNet weights maps peak from the first step; from scratch none does, every
# class would train as background, and the saliency loss would push the class maps off the salient
# objects for good (observed: no map was ever selected as foreground in 84 steps of a quick-preset
# run). Crop padding is left out of the overlap and the loss, where the authors count it as
# saliency 0 (background): up to half of a crop of a down-scaled 96 px image is padding.
#
# Because the background map must cover everything the detector calls non-salient, co-occurring
# context (rail under a train, water under a boat) is pushed into the background: EPS targets the
# context false positives of the CAM baseline. Pseudo masks are the C object maps, thresholded
# against a constant background score as in the authors' code (optionally with a dense CRF).
#
# Paper, PASCAL VOC 2012 train, pseudo-mask mIoU (%) (Table 4): CAM 48.0, EPS 69.4 (71.4 with CRF);
# map selection (Table 3): no selection 66.1, naive 66.5, pre-defined classes 67.9, adaptive 69.4.
# Context (Table 2): train-with-railroad confusion 0.11 for CAM vs 0.02 for EPS.
#
# Saliency sources (`saliency` option): `dataset` (SynthVOC's simulated detector in
# `SaliencyMaps/`, which misses some small objects and fires on some distractors, or the folder in
# `ExperimentConfig.saliency_dir`), `folder` (your own maps, e.g. PFAN/DUTS for real VOC, given as
# `saliency_dir`), and the training-free OpenCV detectors `spectral_residual` and `fine_grained`.

# %% tags=["parameters"]
preset = "quick"  # SynthVOC preset: tiny, quick or full
data_root = None  # a VOC-layout folder (e.g. VOCdevkit/VOC2012), None: SynthVOC
saliency_dir = None  # your saliency maps (<id>.png) for real data
saliency = "dataset"  # dataset, folder, spectral_residual or fine_grained
backbone = "small"  # small (CPU), resnet18, resnet50, resnet101
pretrained = None  # None: the preset's start (quick: "synthvoc"), "scratch", "imagenet" or a file
epochs = None  # None: the recipe of the preset
batch_size = None
lr = None
seed = 0
crf = True  # also report the maps + dense CRF
n_examples = 6
ablations = True  # the tau and lambda sweeps (the paper's supplementary ablations)
taus = [0.2, 0.4, 0.6]
lambdas = [0.0, 0.5, 1.0]
ablation_epochs = 1  # schedule of every sweep row, CAM included, None: that of the main runs

# %%
from IPython.display import Markdown, display

from wsss import report, viz
from wsss.analysis.baseline import threshold_sweeps, versus_baseline
from wsss.analysis.eps import example_grid_rows, non_default_options, saliency_dataset, selection_rows
from wsss.experiment import Experiment, experiment_factory

experiment = experiment_factory(preset, data_root=data_root, saliency_dir=saliency_dir, backbone=backbone,
                                pretrained=pretrained, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)


def eps_experiment(**kwargs) -> Experiment:
    """Options equal to the paper's defaults are dropped, so those runs are the main run."""
    return experiment("eps", **non_default_options(saliency=saliency, **kwargs))


# The CAM baseline never reads saliency: saliency_dir only changes its config hash, so leave it out.
baseline = experiment("cam", saliency_dir=None)
exp = eps_experiment()
print("CAM run:", baseline.run_dir.name)
print("EPS run:", exp.run_dir.name)

# %% [markdown]
# ## Training

# %%
base_result, result = baseline.train(), exp.train()
results = {"CAM": base_result, "EPS": result}
display(Markdown(viz.markdown_table(report.speed_rows(results), ["run", "steps", "seconds", "images/s"])))
viz.save_figure(viz.plot_curves({"CAM": baseline.train_log(), "EPS": exp.train_log()},
                                keys=("loss", "cls", "sal", "fg_selected", "bg_selected")), "02_eps_training");

# %% [markdown]
# `cls`: classification loss; `sal`: saliency loss; `fg_selected` / `bg_selected`: share of the
# present classes whose map went to the foreground / background in the batch of the step (the rest
# have no pixel above 0.5).
#
# ## Background threshold sweep

# %%
threshold_sweeps({"CAM": baseline, "EPS": exp}, "02_eps_sweep");

# %% [markdown]
# ## Metrics (pseudo masks from the class maps, evaluation split)

# %%
part = exp.phenomena().get("part_defined", [])
rows, scores = versus_baseline({"CAM": baseline, "EPS": exp}, results, crf, part)

# %%
# NBVAL_CHECK_OUTPUT
columns = ["variant", "bg_threshold", "miou", "fg_precision", "fg_recall", "context_fp_rate", "boundary_iou",
           "part_recall"]
print(viz.markdown_table(rows, columns, percent=columns[2:]))

# %%
per_class = report.per_class_rows(scores, ("iou", "precision"), exp.phenomena())
display(Markdown(viz.markdown_table(per_class, list(per_class[0]), percent=list(per_class[0])[1:-1])))

# %% [markdown]
# ## Localization maps, given and estimated saliency
#
# Each row: the image, the given saliency, EPS's estimated saliency (Eq. 1), the map of each
# present class titled with its overlap ratio O with the given saliency and where map selection
# sends it (foreground if O > tau, neither if the map has no pixel above 0.5), the background map,
# and the ground truth. All at scale 1, no flip.

# %%
model, sal_ds = exp.trained_method(), saliency_dataset(exp, exp.config.eval_split)
picks = viz.pick_examples(sal_ds, n_examples)
viz.save_figure(viz.titled_grid(example_grid_rows(model, sal_ds, picks, exp.device),
                                class_names=exp.class_names, score_bar=True), "02_eps_maps");

# %% [markdown]
# ## Map selection per class
#
# The decision of Eq. 2 for the examples above, and its tally over the evaluation split: a class
# goes to the background when its map mostly lies outside the given saliency (a missed object, or a
# map still on context).

# %%
decisions = selection_rows(model, sal_ds, [i for i, _ in picks], exp.class_names, exp.device)
display(Markdown(viz.markdown_table(decisions, ["image", "class", "overlap", "map goes to"], digits=2)))
all_rows = selection_rows(model, sal_ds, list(range(len(sal_ds))), exp.class_names, exp.device)
destinations = ["foreground", "background", "neither (empty map)"]
tally = [{"class": c, "images": sum(r["class"] == c for r in all_rows),
          **{d: sum(r["class"] == c and r["map goes to"] == d for r in all_rows) /
             max(1, sum(r["class"] == c for r in all_rows)) for d in destinations}} for c in exp.class_names]
display(Markdown(viz.markdown_table(tally, ["class", "images", *destinations], percent=destinations)))

# %% [markdown]
# ## Pseudo masks

# %%
viz.save_figure(viz.cam_example_grid(exp.dataset(exp.config.eval_split), exp.class_maps(), n_examples,
                                     exp.best_threshold()), "02_eps_pseudo_masks");

# %% [markdown]
# ## Sweeps of tau and lambda (the paper's supplementary ablations)
#
# Every row of this table, the CAM row included, is trained with the same schedule
# (`ablation_epochs` epochs, None = the main runs' schedule, whose rows are then the runs above).
# tau: the overlap a map needs to join the foreground (tau = 0 puts every map with one salient
# pixel in the foreground, close to the paper's naive strategy); lambda: weight of the foreground
# map against the inverted background map (0: background map only, 1: foreground maps only).

# %%
sweep_rows = []
if ablations:
    short = ablation_epochs if ablation_epochs is not None else epochs
    runs = [("CAM", experiment("cam", epochs=short))]
    runs += [(f"EPS tau={tau}", eps_experiment(epochs=short, tau=tau)) for tau in taus]
    runs += [(f"EPS lambda={lam}", eps_experiment(epochs=short, lam=lam)) for lam in lambdas if lam != 0.5]
    for name, run in runs:
        r, s = run.train(), run.evaluate()
        sweep_rows.append(report.make_row(s, variant=f"sweep: {name}", stage="cam", part_classes=part,
                                          train_s=r.seconds, images_per_s=r.images_per_s,
                                          schedule=f"{run.config.train.epochs} ep, {r.steps} steps"))
    report.record([r for r in sweep_rows if r["method"] == "eps"])

# %%
# NBVAL_CHECK_OUTPUT
columns = ["variant", "schedule", "bg_threshold", "miou", "fg_precision", "fg_recall", "context_fp_rate"]
print(viz.markdown_table(sweep_rows, columns, percent=columns[3:]) if sweep_rows else "ablations = False")

# %% [markdown]
# ## This run in the comparison
#
# The rows notebook 07 puts beside the other methods: class maps on val (threshold chosen on
# train) and the method's final pseudo masks on train, the masks a final network learns from.

# %%
from wsss import compare

display(Markdown(compare.comparison_rows_table(exp, part)))
