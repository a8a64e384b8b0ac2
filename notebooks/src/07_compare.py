# %% [markdown]
# # Comparison of all methods, and the final segmentation stage
#
# Every method's main run (the one its own notebook trains, so this costs nothing after the
# method notebooks) is scored the way the papers score it:
#
# - **CAM** mIoU: class maps thresholded at the background threshold chosen on train, on val;
# - **pseudo masks**: the method's final pseudo masks (its own refinement where the paper has
#   one), on the *train* split, the masks the segmentation network learns from;
# - **final**: a segmentation network (our `small` backbone + DeepLabV3 ASPP head on SynthVOC;
#   DeepLabV3-ResNet50 on real VOC) trained on those pseudo masks, multi-scale + flip inference,
#   on val; the same network trained on the ground-truth masks is the fully supervised upper
#   bound, and weak/full is the ratio the papers quote.
#
# Training a final network costs about as much as training a method, so only `final_methods`
# get one (default: the CAM baseline and the best method by pseudo-mask mIoU).
# The papers' numbers are PASCAL VOC 2012 with ImageNet backbones: they are quoted for
# orientation next to ours on SynthVOC, not to be matched.

# %% tags=["parameters"]
preset = "quick"  # SynthVOC preset: tiny, quick or full
data_root = None  # a VOC-layout folder (e.g. VOCdevkit/VOC2012), None: SynthVOC
backbone = "small"  # as in the method notebooks, whose runs this one reuses
pretrained = None  # None: the preset's start
methods = None  # None: every main method of the registry, in notebook order; or a list of names
final_methods = None  # None: CAM + the best method by pseudo-mask mIoU, []: no final stage
upper_bound = True  # train the same network on ground-truth masks
final_epochs = None  # None: the presets final-stage recipe
final_crf = True  # also report each final network + dense CRF
seed = 0
n_examples = 4

# %%
import time

from IPython.display import Markdown, display

from wsss import ceiling, claims, compare, report, viz
from wsss.paper_numbers import PAPER_FULLY_SUPERVISED
from wsss.stages.final import SegConfig

run, missing = compare.split_registered(methods)
for m in missing:
    print(f"skipped {m}: no method of that name is registered (its module is not in wsss/methods yet)")
experiments = {m: compare.main_experiment(preset, m, seed=seed, data_root=data_root, backbone=backbone,
                                          pretrained=pretrained) for m in run}
part = experiments[run[0]].phenomena().get("part_defined", [])

# %% [markdown]
# ## Class maps and pseudo masks

# %%
t0 = time.perf_counter()
rows = {m: compare.method_rows(exp, part) for m, exp in experiments.items()}
report.record([r for per in rows.values() for r in per.values()])
print(f"methods: {time.perf_counter() - t0:.0f} s (training is free when the method notebooks ran first)")

# %% [markdown]
# ## Final segmentation stage

# %%
finals_to_run = compare.default_final_methods(rows) if final_methods is None else [m for m in final_methods if m in rows]
seg_config = SegConfig.for_preset(preset, voc=experiments[run[0]].is_real_voc(), epochs=final_epochs, seed=seed)
finals, final_cost = {}, []
for m in finals_to_run:
    stage = compare.final_stage(experiments[m], config=seg_config)
    finals[m] = compare.final_row(stage, part_classes=part)
    final_cost.append({"network": stage.variant, "train s": finals[m]["train_s"], "total s": finals[m]["stage_s"],
                       "images/s": finals[m]["images_per_s"], "run": stage.run_dir.name})
    if final_crf:
        report.record([compare.final_row(stage, crf=True, part_classes=part)])
upper = None
if upper_bound:
    gt_stage = compare.final_stage(experiments[run[0]], ground_truth=True, config=seg_config)
    upper = compare.final_row(gt_stage, part_classes=part)
    if final_crf:
        report.record([compare.final_row(gt_stage, crf=True, part_classes=part)])
    final_cost.append({"network": gt_stage.variant, "train s": upper["train_s"], "total s": upper["stage_s"],
                       "images/s": upper["images_per_s"], "run": gt_stage.run_dir.name})
report.record(list(finals.values()) + ([upper] if upper else []))
display(Markdown(viz.markdown_table(final_cost, ["network", "train s", "total s", "images/s", "run"])))

# %% [markdown]
# ## All methods
#
# Percentages. CAM: val; pseudo masks (mIoU, foreground precision / recall, boundary IoU, context
# FP rate, part-defined recall, contour F where the method predicts contours): train; final: val.
# weak/full: final mIoU over the ground-truth-trained network's. train s: the method's training.

# %%
# NBVAL_CHECK_OUTPUT
table = compare.comparison_table(rows, finals, upper)
columns = ["method", "cam_miou", "pseudo_miou", "precision", "recall", "boundary_iou", "context_fp", "part_recall",
           "contour_f", "final_miou", "weak_full"]
print(viz.markdown_table(table, columns, percent=columns[1:]))

# %%
display(Markdown(viz.markdown_table(table, ["method", "train_s"])))

# %% [markdown]
# ## The papers' claims over seeds
#
# Each claim as a paired difference against its baseline over seeds, with its 95% interval and
# verdict, from the last `wsss study` (`reports/claims.md`; the table above is one seed). A run
# whose reports folder has no study (the quick demo's `reports/demo/`) shows the checkout's.

# %%
claim_rows = claims.read_claims()
display(Markdown(claims.claims_markdown(claim_rows) if claim_rows else
                 "No study yet: `wsss study --preset quick --seeds 5` writes it (`--claims KEY ...` for a subset)."))

# %% [markdown]
# ## The ceiling and the weak/full ratios over seeds
#
# At each seed every mask source (ground truth, each method's pseudo masks) trains the same final
# network, scored on val without and with CRF. weak/full divides by the ground-truth network's
# mIoU at the same seed and CRF setting; "bounded" when the ground-truth network without CRF beats
# the row (the 95% interval of the paired gap lies above 0). From the last `wsss ceiling`
# (`reports/ceiling.md`, or the checkout's as above; the final column above is one seed).

# %%
ceiling_rows = ceiling.read_ceiling()
display(Markdown(ceiling.ceiling_markdown(ceiling_rows) if ceiling_rows else
                 "No ceiling study yet: `wsss ceiling --preset quick --seeds 5` writes it (`--sources cam eps ...` "
                 "for a subset; the ground truth is always trained)."))

# %% [markdown]
# ## The same val images across methods
#
# Each method's final pseudo masks on val, then the final networks' predictions.

# %%
val = experiments[run[0]].dataset("val")
columns_by_name = {m: exp.final_pseudo_masks("val") for m, exp in experiments.items()}
for m in finals:
    columns_by_name[f"final ({m})"] = compare.final_stage(experiments[m], config=seg_config).predict("val")
if upper_bound:
    columns_by_name["final (GT)"] = gt_stage.predict("val")
viz.save_figure(compare.side_by_side(val, columns_by_name, n_examples), "07_compare_examples");

# %% [markdown]
# ## Next to the papers' numbers (PASCAL VOC 2012, the papers' own tables)

# %%
papers = compare.papers_table(run, rows, finals)
display(Markdown(viz.markdown_table(papers, list(papers[0]), percent=list(papers[0])[1:-1])))
display(Markdown("Fully supervised references in the papers: " + "; ".join(
    f"{r['network']} {r['seg_val'] or '-'} val / {r['seg_test']} test ({r['source']})" for r in PAPER_FULLY_SUPERVISED)))
