# %% [markdown]
# # VWL: visual words and hybrid spatial pyramid pooling
#
# Ru, Du and Wu (IJCAI 2021) change two things in the CAM network and nothing downstream:
#
# - **Visual word encoder (VWE).** A learnable codebook of k words (k = 256) encodes every feature
#   location by a softmax over its cosine similarities to the words. The words that win somewhere in
#   an image form its multi-hot *word label*, which the network must predict from the GAP feature;
#   the soft word histogram (summed over locations, as the authors' code does) must predict the
#   image label. Words are finer than classes, so the
#   backbone has to describe more of each object than the one part that tells the class apart.
# - **Hybrid spatial pyramid pooling (HSPP).** The image classifier sees
#   (GMP + mean of 2x2 bin maxima + mean of 4x4 bin maxima + gamma GAP) / (gamma + 3), gamma = 2,
#   between GMP (too little object) and GAP (too much background).
#
# The paper's CAM is the element-wise max of the image-branch and word-branch CAMs (Eq. 12); the
# authors' inference, followed here, uses the image branch alone. Pseudo masks are the shared
# thresholded class maps (optionally with a dense CRF); the paper then refines with IRNet.
#
# Paper, PASCAL VOC 2012 CAM pseudo-label mIoU (%) train / val (Table 1): baseline 48.3 / 47.0,
# +VWE 51.1 / 50.2, +HSPP 50.6 / 50.0, both 52.9 / 52.0; after IRNet 67.7 / 65.7 (Table 2).
#
# On SynthVOC the phenomenon VWL targets is the part-defined pair `horned` / `tailed`: one body,
# told apart by a small part, so the baseline CAM lights up the part only.

# %% tags=["parameters"]
preset = "quick"  # SynthVOC preset: tiny, quick or full
data_root = None  # a VOC-layout folder (e.g. VOCdevkit/VOC2012), None: SynthVOC
backbone = "small"  # small (CPU), resnet18, resnet50, resnet101
pretrained = None  # None: the preset's start (quick: "synthvoc"), "scratch", "imagenet" or a file
epochs = None  # None: the recipe of the preset
batch_size = None
lr = None
seed = 0
num_words = 256  # codebook size k
gamma = 2.0  # weight of GAP in HSPP
crf = True  # also report CAM + dense CRF
ablations = True  # train the Table 1 rows (+VWE alone, +HSPP alone)
ablation_epochs = 2  # schedule of all four ablation rows, None: the schedule of the main runs (reuses them)
n_examples = 6
n_word_examples = 6

# %%
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from wsss import report, viz
from wsss.analysis.baseline import threshold_sweeps, versus_baseline
from wsss.analysis.vwl import (ABLATION_ROWS, branch_cams, distinctive_words, word_examples, word_map_at,
                               word_usage)
from wsss.experiment import Experiment, experiment_factory

experiment = experiment_factory(preset, data_root=data_root, backbone=backbone, pretrained=pretrained,
                                epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)


def vwl_experiment(vwe: bool = True, hspp: bool = True, epochs=epochs) -> Experiment:
    """Both parts off is the CAM baseline itself (same layers and loss), so it reuses the CAM run."""
    if not (vwe or hspp):
        return experiment("cam", epochs=epochs)
    return experiment("vwl", epochs=epochs, vwe=vwe, hspp=hspp, num_words=num_words, gamma=gamma)


baseline = vwl_experiment(False, False)  # the run of notebook 01 when the settings match
exp = vwl_experiment()
print("CAM run:", baseline.run_dir.name)
print("VWL run:", exp.run_dir.name)

# %% [markdown]
# ## Training

# %%
base_result, result = baseline.train(), exp.train()
results = {"CAM": base_result, "VWL": result}
display(Markdown(viz.markdown_table(report.speed_rows(results), ["run", "steps", "seconds", "images/s"])))
viz.save_figure(viz.plot_curves({"CAM": baseline.train_log(), "VWL": exp.train_log()},
                                keys=("loss", "img", "word", "w2i")), "03_vwl_training");

# %% [markdown]
# `img`: image labels from HSPP; `word`: the online word labels from GAP; `w2i`: image labels from
# the word frequencies. The CAM run's `loss` is its single classification loss.
#
# ## Background threshold sweep

# %%
threshold_sweeps({"CAM": baseline, "VWL": exp}, "03_vwl_sweep");

# %% [markdown]
# ## Metrics (CAM pseudo masks on the evaluation split)

# %%
part = exp.phenomena().get("part_defined", [])
rows, scores = versus_baseline({"CAM": baseline, "VWL": exp}, results, crf, part)

# %%
# NBVAL_CHECK_OUTPUT
columns = ["variant", "bg_threshold", "miou", "fg_precision", "fg_recall", "boundary_iou", "context_fp_rate",
           "part_recall"]
print(viz.markdown_table(rows, columns, percent=columns[2:]))

# %%
per_class = report.per_class_rows(scores, ("iou", "recall"), exp.phenomena())
display(Markdown(viz.markdown_table(per_class, list(per_class[0]), percent=list(per_class[0])[1:-1])))

# %% [markdown]
# ## The two CAM branches
#
# Each row: the image, the image-branch CAM (the CAM this run reports, as the authors' inference
# computes it), the word-branch CAM (both divided by the larger of their maxima, so the stronger
# branch shows brighter), the visual-word map (winning word per feature location, one colour per
# word) and the ground truth.

# %%
model, ds = exp.trained_method(), exp.dataset(exp.config.eval_split)


def word_colors(words: np.ndarray) -> np.ndarray:
    return viz.heat((words * 0.618034) % 1.0, cmap="hsv")  # golden-ratio hues: neighbouring ids differ


grid = []
for index, c in viz.pick_examples(ds, n_examples):
    sample, raw = ds[index], ds.load(index)
    keys, maps = branch_cams(model, sample["image"].to(exp.device), sample["label"], exp.config.scales,
                             exp.config.flip)
    k, name = list(keys).index(c), exp.class_names[c]
    grid.append({raw["id"]: raw["image"], f"image branch: {name}": viz.overlay(raw["image"], maps["image"][k]),
                 f"word branch: {name}": viz.overlay(raw["image"], maps["word"][k]),
                 "visual words": word_colors(word_map_at(model, sample["image"].to(exp.device))),
                 "ground truth": viz.colorize(raw["mask"])})
viz.save_figure(viz.titled_grid(grid, class_names=exp.class_names, score_bar=True), "03_vwl_branches");

# %% [markdown]
# ## Word usage per class
#
# For every evaluation image, the winning word of each feature location, counted by the ground-truth
# class of that location (background included). Words are ordered by overall use.

# %%
usage = word_usage(model, ds, exp.device)
names = ["background", *exp.class_names]
order = np.argsort(-usage.sum(axis=0), kind="stable")
fig, axes = plt.subplots(len(names), 1, figsize=(8, 1.0 * len(names)), sharex=True)
for ax, name, counts in zip(axes, names, usage):
    ax.bar(np.arange(len(order)), counts[order] / max(counts.sum(), 1), width=1.0)
    ax.set_ylabel(name, rotation=0, ha="right", fontsize=8)
axes[-1].set_xlabel("word (ordered by overall use)")
fig.tight_layout()
viz.save_figure(fig, "03_vwl_word_usage")

share = usage / np.maximum(usage.sum(axis=1, keepdims=True), 1)
entropy = -(share * np.log(np.where(share > 0, share, 1.0))).sum(axis=1)
usage_rows = [{"class": n, "locations": int(usage[i].sum()), "words used": int((usage[i] > 0).sum()),
               "effective words": float(np.exp(entropy[i])), "top word": int(share[i].argmax()),
               "top word share": float(share[i].max())} for i, n in enumerate(names)]
display(Markdown(viz.markdown_table(usage_rows, list(usage_rows[0]), percent=["top word share"])))
print(f"{int((usage.sum(axis=0) > 0).sum())} of {num_words} words win at least one location")

# %% [markdown]
# ## Examples per word (the paper's Fig. 5)
#
# For each class, the word most specific to it (highest share of that word's locations falling on
# the class); each row shows the patches where the word wins with the highest probability, one per
# image.

# %%
specific = distinctive_words(usage, per_class=1)
words = [(names[c], w[0]) for c, w in specific.items() if w]
patches = word_examples(model, ds, [w for _, w in words], n_word_examples, patch=max(16, ds.load(0)["image"].shape[0] // 3),
                        device=exp.device)
rows_img = [patches[w] for _, w in words if patches[w]]
labels = [f"word {w} ({name}, {100 * usage[names.index(name), w] / usage[:, w].sum():.0f}%)"
          for name, w in words if patches[w]]
viz.save_figure(viz.image_grid(rows_img, row_labels=labels, size=1.2), "03_vwl_word_examples");

# %% [markdown]
# ## Ablation (the paper's Table 1)
#
# The same method with its parts switched off; "baseline" (both off) is the CAM baseline. All four
# rows share one schedule (`ablation_epochs`, or the main runs' when None, in which case the
# baseline and full rows are the runs above and cost nothing).

# %%
ablation = []
if ablations:
    for name, vwe, hspp in ABLATION_ROWS:
        run = vwl_experiment(vwe, hspp, epochs=ablation_epochs if ablation_epochs is not None else epochs)
        r, s = run.train(), run.evaluate()
        row = report.make_row(s, variant=f"Table 1: {name}", stage="cam", part_classes=part,
                              train_s=r.seconds, images_per_s=r.images_per_s)
        ablation.append({**row, "Baseline": "✓", "VWE": "✓" if vwe else "", "HSPP": "✓" if hspp else "",
                         "schedule": f"{run.config.train.epochs} ep, {r.steps} steps",
                         **{f"{c} rec": s["recall"][c] for c in part}})
    report.record(ablation)

# %%
# NBVAL_CHECK_OUTPUT
columns = ["Baseline", "VWE", "HSPP", "schedule", "bg_threshold", "miou", "fg_recall", "part_recall",
           *[f"{c} rec" for c in part]]
print(viz.markdown_table(ablation, columns, percent=columns[5:]) if ablation else "ablations = False")

# %% [markdown]
# ## This run in the comparison
#
# The rows notebook 07 puts beside the other methods: class maps on val (threshold chosen on
# train) and the method's final pseudo masks on train, the masks a final network learns from.

# %%
from wsss import compare

display(Markdown(compare.comparison_rows_table(exp, part)))
