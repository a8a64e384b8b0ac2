# %% [markdown]
# # CAM baseline
#
# The class activation map baseline every paper in the workbench starts from (IRNet's recipe):
# backbone, global average pooling, 1x1 classifier, multi-label soft-margin loss. CAMs are
# inferred at scales 1.0, 0.5, 1.5, 2.0 with flips, thresholded against a constant background
# score (swept, best reported) and optionally refined with a dense CRF.
#
# On SynthVOC the baseline should show the planted failures: low recall on the part-defined
# classes (`horned`, `tailed`), a high context false-positive rate (rail, water) and coarse
# boundaries. These rows are what the five methods are measured against.

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
n_examples = 8

# %%
from IPython.display import Markdown, display

from wsss import report, viz
from wsss.experiment import Experiment, ExperimentConfig

config = ExperimentConfig.for_preset(preset, method="cam", data_root=data_root, backbone=backbone,
                                     pretrained=pretrained, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
exp = Experiment(config)
print("run directory:", exp.run_dir.name)

# %% [markdown]
# ## Training

# %%
result = exp.train()
print(f"{result.steps} steps, {result.images_per_s:.1f} images/s, {result.seconds:.0f} s")
viz.save_figure(viz.plot_curves({"CAM": exp.train_log()}), "01_cam_training");

# %% [markdown]
# ## Background threshold sweep (IRNet's `eval_cam`)

# %%
# The threshold is chosen on the train split; the reported split's own best is an oracle, shown
# beside it (`oracle mIoU` in the tables), never used.
sweep = exp.sweep()
viz.save_figure(viz.plot_sweeps({"CAM (train)": exp.sweep(config.train_split), "CAM (val, oracle)": sweep}),
                "01_cam_sweep")
print(f"background threshold chosen on train: {exp.best_threshold():.2f}; "
      f"best on {config.eval_split} (oracle): {sweep['best_threshold']:.2f}")
if crf:  # CRF sharpens the maps, so its rows use their own threshold, chosen on train with CRF
    print(f"background threshold chosen on train with CRF: {exp.crf_threshold():.2f}")

# %% [markdown]
# ## Metrics

# %%
part = exp.phenomena().get("part_defined", [])
rows = [report.make_row(exp.evaluate(), variant="CAM", stage="cam", part_classes=part,
                        train_s=result.seconds, images_per_s=result.images_per_s)]
if crf:
    rows.append(report.make_row(exp.evaluate(crf=True), variant="CAM + CRF", stage="cam", part_classes=part))
report.record(rows);

# %%
# NBVAL_CHECK_OUTPUT
columns = ["variant", "bg_threshold", "miou", "fg_precision", "fg_recall", "boundary_iou", "context_fp_rate",
           "part_recall"]
print(viz.markdown_table(rows, columns, percent=columns[2:]))

# %%
scores = exp.evaluate()
per_class = [{"class": c, "iou": scores["iou"][c], "precision": scores["precision"][c], "recall": scores["recall"][c],
              "phenomenon": "part-defined" if c in part else ("context" if c in exp.phenomena().get("context", {}) else "")}
             for c in scores["iou"]]
display(Markdown(viz.markdown_table(per_class, ["class", "iou", "precision", "recall", "phenomenon"],
                                    percent=["iou", "precision", "recall"])))

# %% [markdown]
# ## CAMs, pseudo masks and ground truth

# %%
fig = viz.cam_example_grid(exp.dataset(config.eval_split), exp.class_maps(), n_examples, exp.best_threshold())
viz.save_figure(fig, "01_cam_examples");

# %% [markdown]
# ## This run in the comparison
#
# The rows notebook 07 puts beside the other methods: class maps on val (threshold chosen on
# train) and the method's final pseudo masks on train, the masks a final network learns from.

# %%
from wsss import compare

display(Markdown(compare.comparison_rows_table(exp, part)))
