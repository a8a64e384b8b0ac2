# %% [markdown]
# # Shape cues: single-stage segmentation with SCM and SPR
#
# Kho, Lee et al. (Pattern Recognition) train one segmentation network end to end from image
# labels; its decoder output is the final mask.
#
# - **Network.** DeepLabV3 (ASPP) with a four-layer decoder. The K class scores get a constant
#   background score of 1, and normalized global weighted pooling (Eq. 1) gives image scores for
#   the classification loss over the object classes.
# - **Shape cue module (SCM).** The self-information of every feature location is estimated with a
#   Gaussian kernel density over 9 random neighbour patches within Manhattan radius 7 (2 on
#   96 px images: sizes in cells go through the scale policy, `wsss.scale`)
#   (bandwidth 1). Low-information (texture) locations are dropped with probability proportional
#   to exp(-I / 0.5), and a conv turns the surviving, shape-biased features into cues for the decoder.
# - **Semantics-augmented pixel refinement (SPR).** The decoder's probabilities are refined on the
#   fly by local affinities that mix colour and class-score differences (alpha = 0.8; the constant
#   background score leaves the background channel with colour alone), over 3x3
#   windows dilated by 1, 2, 4, 8, 12 and 24 (1, 2 and 5 on 96 px images' 24-cell maps), for 10
#   iterations, with one sigma pooled over all dilations as in PAMR. The result is cut into pseudo masks
#   (60% of each class's maximum, floor 0.2; unsure and conflicting pixels ignored).
# - **Losses.** The pseudo masks supervise the decoder through a class-balanced cross-entropy and a
#   region loss (KL divergence to agreeing neighbours, a hinge with margin 3 to disagreeing ones,
#   radius 3; 1 on 96 px images).
#   The region loss's weight is annealed from 0 to 1.
#
# Paper, PASCAL VOC 2012 val, WideResNet-38:
# - single stage: 65.2 mIoU without CRF and 66.4 with CRF (Table 1);
# - boundary IoU: 46.6 without CRF and 49.3 with CRF (Table 2);
# - ablation, val mIoU / bIoU (Table 5): baseline with colour-only refinement 41.7 / 17.8,
#   +SPR 44.1 / 22.2, +SCM 51.0 / 27.8, both 65.2 / 46.6.
#
# Adaptations, all options of the method:
# - the backbone starts from the CAM baseline's classification network, as the paper's starts from
#   an ImageNet classifier;
# - the mask losses start after the first quarter of training (`mask_start`), so that the randomly
#   initialized decoder first learns from image labels (SSSS, whose pipeline the paper follows,
#   does the same);
# - SSSS's focal mask penalty, which the paper's Eq. 1 does not have, is off by default
#   (`size_penalty=True` adds it to nGWP); with it every run locked its masks onto the context that
#   comes with train and boat (rails, water);
# - the paper's 10x learning-rate ratio between new modules and backbone is kept by slowing the
#   backbone (0.1x) rather than speeding up the decoder, which under AdamW stays at the label prior.

# %% tags=["parameters"]
preset = "quick"  # SynthVOC preset: tiny, quick or full
data_root = None  # a VOC-layout folder (e.g. VOCdevkit/VOC2012), None: SynthVOC
backbone = "small"  # small (CPU), resnet18, resnet50, resnet101
pretrained = None  # None: the preset's start (quick: "synthvoc"), "scratch", "imagenet" or a file
epochs = None  # None: the preset recipe
batch_size = None
lr = None
seed = 0
crf = True  # also report the CAM baseline + dense CRF
ablations = True  # train the Table 5 rows (image labels only, baseline, +SPR, +SCM, both)
ablation_epochs = None  # schedule of every ablation row, None: the main run schedule
alpha_sweep_images = 256  # train images of the Table 6 sweep of SPR's alpha (with the ablations), 0: skip it
n_examples = 4

# %%
import numpy as np
import torch
from IPython.display import Markdown, display

from wsss import report, viz
from wsss.analysis.shape_cues import ABLATION_ROWS, explain, spr_alpha_sweep, spr_seconds_per_batch
from wsss.experiment import experiment_factory
from wsss.io import load_label_png

experiment = experiment_factory(preset, data_root=data_root, backbone=backbone, pretrained=pretrained,
                                epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)

baseline = experiment("cam")  # the run of notebook 01 when the settings match
exp = experiment("shape_cues")  # the paper's defaults: SCM and SPR on
print("CAM run:", baseline.run_dir.name)
print("shape cues run:", exp.run_dir.name)

# %% [markdown]
# ## Training
#
# SPR time is measured on one training-size batch of the trained model: the online refinement
# and pseudo masks that every training step after `mask_start` computes.

# %%
base_result, result = baseline.train(), exp.train()
model = exp.trained_method()
spr_s = spr_seconds_per_batch(model, exp.dataset(exp.config.eval_split), exp.config.train.batch_size,
                              device=exp.device)
display(Markdown(viz.markdown_table(report.speed_rows({"CAM": base_result, "shape cues": result}),
                                    ["run", "steps", "seconds", "images/s"])))
print(f"SPR + pseudo masks: {spr_s * 1000:.0f} ms per batch of {exp.config.train.batch_size}")
viz.save_figure(viz.plot_curves({"shape cues": exp.train_log()}, keys=("loss", "cls", "pixel", "region")),
                "06_shape_cues_training");

# %% [markdown]
# `cls` is the nGWP classification loss. `pixel` and `region` are the losses from the SPR pseudo
# masks; they start at `mask_start`, and `region` already includes its annealed weight.
#
# ## Metrics on the evaluation split
#
# - CAM baseline rows: its class maps at the best background threshold, with and without CRF.
# - "shape cues class maps": the decoder's foreground probabilities through the same threshold
#   sweep.
# - "shape cues decoder": the method's own final masks, the decoder's argmax over background +
#   present classes, with multi-scale + flip inference.
#
# `context_fp_rate` is the share of context pixels (SynthVOC's rails and water) labelled as the
# class they come with; `context_recall` the mean recall of those classes (train, boat) on their own
# pixels.

# %%
phenomena = exp.phenomena()
classes = {"part_classes": phenomena.get("part_defined", []), "context_classes": list(phenomena.get("context", {}))}
decoder_scores = exp.evaluate_masks(exp.final_pseudo_masks(exp.config.eval_split), exp.config.eval_split)
decoder_scores.update(exp.provenance(exp.config.eval_split, None, False))
rows = [report.make_row(baseline.evaluate(), variant="CAM", stage="cam", **classes)]
if crf:
    rows.append(report.make_row(baseline.evaluate(crf=True), variant="CAM + CRF", stage="cam", **classes))
rows += [report.make_row(exp.evaluate(), variant="shape cues class maps", stage="cam", **classes),
         report.make_row(decoder_scores, variant="shape cues decoder", stage="pseudo", train_s=result.seconds,
                         images_per_s=result.images_per_s, **classes)]
report.record([r for r in rows if r["method"] == "shape_cues"]);

# %%
# NBVAL_CHECK_OUTPUT
columns = ["variant", "stage", "bg_threshold", "miou", "boundary_iou", "fg_precision", "fg_recall", "context_fp_rate",
           "context_recall", "part_recall"]
print(viz.markdown_table(rows, columns, percent=columns[3:]))

# %% [markdown]
# ## Shape cue module: self-information and drop masks
#
# Each row shows:
# - the image;
# - the self-information of the SCM's input features, taken over every offset of the Manhattan
#   ball (bright = unique = shape);
# - the drop distribution;
# - the probability that a location survives the drops, which is what evaluation uses;
# - one random training draw (black = dropped).

# %%
ds = exp.dataset(exp.config.eval_split)
examples = viz.pick_examples(ds, n_examples)
torch.manual_seed(seed)
explained = {i: explain(model, ds[i]["image"].to(exp.device), ds[i]["label"].to(exp.device)) for i, _ in examples}


def unit(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / max(float(x.max() - x.min()), 1e-12)


grid = []
for i, _ in examples:
    e, raw = explained[i], ds.load(i)
    grid.append({raw["id"]: raw["image"], "self-information": viz.heat(unit(e["information"])),
                 "drop probability": viz.heat(unit(e["drop_prob"])), "survival probability": e["keep"],
                 "one draw": e["sampled_keep"]})
viz.save_figure(viz.titled_grid(grid, score_bar=True), "06_shape_cues_scm");

# %% [markdown]
# ## SPR iterations
#
# For one example, the argmax over background and the present classes:
# - the decoder's prediction (iteration 0);
# - SPR iterations 1, 2, 5 and T;
# - the pseudo mask (white = ignored);
# - the ground truth.

# %%
i0 = examples[0][0]
e, raw = explained[i0], ds.load(i0)
shown = sorted({0, 1, 2, 5, len(e["spr_steps"]) - 1})
row = {raw["id"]: raw["image"], **{f"SPR t={t}": viz.colorize(e["spr_steps"][t]) for t in shown},
       "pseudo mask": viz.colorize(e["pseudo"]), "ground truth": viz.colorize(raw["mask"])}
viz.save_figure(viz.titled_grid([row], class_names=ds.class_names), "06_shape_cues_spr");

# %% [markdown]
# ## Pseudo masks next to predictions
#
# Each row shows:
# - the image;
# - the decoder's single-scale prediction;
# - the online SPR pseudo mask it would be trained on (white = ignored);
# - the final mask (multi-scale + flip);
# - the ground truth.

# %%
final_dir = exp.final_pseudo_masks(exp.config.eval_split)
grid = []
for i, _ in examples:
    e, raw = explained[i], ds.load(i)
    grid.append({raw["id"]: raw["image"], "prediction": viz.colorize(e["prediction"]),
                 "SPR pseudo mask": viz.colorize(e["pseudo"]),
                 "final mask": viz.colorize(load_label_png(final_dir / f"{raw['id']}.png")),
                 "ground truth": viz.colorize(raw["mask"])})
viz.save_figure(viz.titled_grid(grid, class_names=ds.class_names), "06_shape_cues_masks");

# %% [markdown]
# ## Ablation (the paper's Table 5)
#
# The paper's rows:
# - baseline: no SCM, colour-only refinement (alpha = 1, PAMR);
# - +SPR: semantics-augmented refinement;
# - +SCM: the shape cue module;
# - both.
#
# Every row is the decoder's final masks on the evaluation split. All rows share one schedule
# (`ablation_epochs`; None: the main run's, whose run the last row then is). A first row, not in
# the paper, stops before the pseudo masks: the decoder trained on image labels alone
# (`mask_start = 1`), the starting point from which self-training moves the masks. Its
# `context_recall` against the other rows' shows what self-training does to the classes that come
# with context.

# %%
ablation = []
if ablations:
    variants = [("image labels only", False, False, {"mask_start": 1.0}),
                *((name, scm, spr, {}) for name, scm, spr in ABLATION_ROWS)]
    for name, scm, spr, options in variants:
        run = experiment("shape_cues", epochs=ablation_epochs if ablation_epochs is not None else epochs, scm=scm,
                         spr=spr, **options)
        r = run.train()
        s = run.evaluate_masks(run.final_pseudo_masks(run.config.eval_split), run.config.eval_split)
        s.update(run.provenance(run.config.eval_split, None, False))
        row = report.make_row(s, variant=f"Table 5: {name}", stage="pseudo", train_s=r.seconds,
                              images_per_s=r.images_per_s, **classes)
        ablation.append({**row, "row": name, "SCM": "✓" if scm else "", "SPR": "✓" if spr else "",
                         "schedule": f"{run.config.train.epochs} ep, {r.steps} steps"})
    report.record(ablation)

# %%
# NBVAL_CHECK_OUTPUT
columns = ["row", "SCM", "SPR", "schedule", "miou", "boundary_iou", "fg_precision", "fg_recall", "context_fp_rate",
           "context_recall"]
print(viz.markdown_table(ablation, columns, percent=columns[4:]) if ablation else "ablations = False")

# %% [markdown]
# ## SPR's balance alpha (the paper's Table 6, network held fixed)
#
# The paper trains one model per alpha. Here this notebook's trained model is held fixed and only
# its online pseudo masks change: SPR at each alpha refines the decoder's output on the first
# `alpha_sweep_images` train images. Columns:
# - `miou`: pseudo-mask mIoU over the pixels the masks label, against the ground truth at the
#   decoder's resolution;
# - `labelled`: the share of pixels they label (the rest is unsure or conflicting);
# - `changed`: the share of labelled pixels whose pseudo label differs from the decoder's own
#   prediction, i.e. the correction the masks feed back into training.
#
# alpha = 1 is colour-only refinement (PAMR), alpha = 0 class scores alone. The semantic term
# lowers the affinity across the decoder's own class boundaries, so lowering alpha from 1 keeps
# the pseudo masks closer to the prediction (`changed` falls).

# %%
sweep = (spr_alpha_sweep(model, exp.dataset("train"), limit=alpha_sweep_images, device=exp.device)
         if ablations and alpha_sweep_images else [])

# %%
# NBVAL_CHECK_OUTPUT
print(viz.markdown_table(sweep, ["alpha", "miou", "labelled", "changed"], percent=["miou", "labelled", "changed"])
      if sweep else "ablations = False" if not ablations else "alpha_sweep_images = 0")

# %% [markdown]
# ## This run in the comparison
#
# The rows notebook 07 puts beside the other methods: class maps on val (threshold chosen on
# train) and the method's final pseudo masks on train, the masks a final network learns from.

# %%
from wsss import compare

display(Markdown(compare.comparison_rows_table(exp, classes["part_classes"])))
