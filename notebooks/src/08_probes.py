# %% [markdown]
# # Probe splits: when does a method's claim hold?
#
# Val mixes every condition SynthVOC plants. The probe splits break one correlation each, as the
# controlled benchmarks do (Waterbirds' conflict groups, ImageNet-9's swapped backgrounds,
# FunnyBirds' part interventions), and every method's main run is scored on them the way it is
# scored on val (background threshold chosen on train, same scales and flips):
#
# - **object alone**: trains and boats without rail or water;
# - **swapped**: a train on water, a boat on rails; *context FP* here is the share of the foreign
#   context labelled as the object standing on it;
# - **context alone**: rail or water without train or boat, beside other classes (with image
#   labels given, nothing can be labelled train or boat here);
# - **part kept / removed / moved**: the same scenes of horned and tailed creatures, intact,
#   without horn or tail, and with it mirrored to the far side of the body; same label.
#
# The worst-group mIoU is the lowest over val and the probes. On val, the relevance-mass
# accuracy (CLEVR-XAI: the share of a class map's mass inside the class's pixels) and its split
# into part / body / elsewhere for the part-defined classes, and mIoU by object size. One seed:
# a difference of a point or two is within the seed-to-seed spread (`wsss study` for claims).

# %% tags=["parameters"]
preset = "quick"  # SynthVOC preset: tiny, quick or full
data_root = None  # a SynthVOC tree written with other settings; None: the preset's (real VOC has no probes)
backbone = "small"  # as in the method notebooks, whose runs this one reuses
pretrained = None  # None: the preset's start
methods = None  # None: every main method with class maps, in notebook order; or a list of names
seed = 0
n_examples = 3

# %%
from IPython.display import Markdown, display

from wsss import compare, viz
from wsss.analysis import probes
from wsss.data import synthvoc

names, missing = compare.split_registered(methods)
for m in missing:
    print(f"skipped {m}: no method of that name is registered")
names = [m for m in names if compare.has_class_maps(m)]
experiments = {m: compare.main_experiment(preset, m, seed=seed, data_root=data_root, backbone=backbone,
                                          pretrained=pretrained)
               for m in names}
rows = [probes.benchmark_row(exp) for exp in experiments.values()]

# %% [markdown]
# ## Worst group and the conflict splits
#
# Percentages: mIoU on val and on each probe, the worst group, context FP on val (rail or water
# labelled train or boat) and on swapped contexts, and the recall of train and boat with and
# without their context.

# %%
# NBVAL_CHECK_OUTPUT
groups = ["val", *synthvoc.PROBES]
columns = ["method", *[f"miou_{g}" for g in groups], "worst_group_miou", "worst_group", "context_fp_val",
           "context_fp_swapped", "context_recall_val", "context_recall_alone"]
print(viz.markdown_table(rows, columns, percent=[c for c in columns if c not in ("method", "worst_group")]))

# %% [markdown]
# ## Parts and where the maps put their mass (val)
#
# Part-defined recall on val, with the part removed and with it moved; the relevance-mass
# accuracy, and for the part-defined classes the share of their map's mass on the part, on the
# body and elsewhere; mIoU of small, medium and large objects (area below 6%, 6-15%, above 15% of
# the image).

# %%
# NBVAL_CHECK_OUTPUT
columns = ["method", "part_recall_val", "part_recall_removed", "part_recall_moved", "relevance_mass", "part_mass",
           "body_mass", "elsewhere_mass", "iou_small", "iou_medium", "iou_large"]
print(viz.markdown_table(rows, columns, percent=columns[1:]))

# %% [markdown]
# ## Part interventions: does the label follow the part, and does the map?
#
# The three part probes hold the same scenes, so each horned or tailed creature is seen intact,
# without its part and with the part on the far side of its body. *Recognized* is the share of
# these creatures the network's own image-level output predicts (probability above 0.5) in the
# intact scenes; a *flip* is one of those no longer predicted after the intervention, with the
# mean drop of its probability. (SANCE has no image classifier: its image score is the class's
# highest pixel probability.) Then, on each probe, the share of the class map's mass on the part,
# on the body and elsewhere. A network that reads the class off the part flips often when the
# part goes; a map that follows the part moves its mass with it. The CAM row is the "before" of
# every method.

# %%
# NBVAL_CHECK_OUTPUT
part_rows = [probes.part_intervention_row(exp) for exp in experiments.values()]
columns = ["method", "part_recognized_kept", "label_flips_removed", "prob_drop_removed", "label_flips_moved",
           "prob_drop_moved"]
print(viz.markdown_table(part_rows, columns, percent=columns[1:]))
columns = ["method", *[f"{where}_mass_{name}" for name in ("kept", "removed", "moved")
                       for where in ("part", "body", "elsewhere")]]
print(viz.markdown_table(part_rows, columns, percent=columns[1:]))

# %% [markdown]
# ## Over seeds: dose-response and part interventions (stored)
#
# Nothing is trained here: these are the rows `wsss dose-response --knob K --seeds 3` and
# `wsss part-interventions --seeds 3` stored in `reports/`. Left of each dose-response plot, a
# claim's effect (method - baseline, 95% CI over seeds) against the strength of its phenomenon;
# right, both arms. Then, per method, where each claim holds along its knob (the verdicts of the
# curves). Below it, each method's part-intervention measures against the CAM's, paired by seed.

# %%
from wsss import dose_response

stored = [r for r in dose_response.read_dose_response() if r["preset"] == preset]
for knob in dict.fromkeys(r["knob"] for r in stored):
    display(dose_response.plot_dose_response(stored, knob))
if stored:  # where each claim holds, from the curves above
    display(Markdown(dose_response.conditions_markdown(stored)))
else:
    print(f"no dose-response rows at preset {preset} yet: wsss dose-response --knob cooccurrence --preset {preset}")
stored = [r for r in probes.read_part_interventions() if r["preset"] == preset]
if any(r["method"] == "cam" for r in stored):
    summary = probes.part_intervention_summary(stored)
    columns = ["method", "seeds", "label_flips_removed", "label_flips_removed_diff", "label_flips_removed_low",
               "label_flips_removed_high", "label_flips_moved", "label_flips_moved_diff", "part_mass_kept",
               "part_mass_kept_diff", "part_mass_kept_low", "part_mass_kept_high"]
    display(Markdown(viz.markdown_table(summary, columns, percent=columns[2:])))
else:
    print(f"no part-intervention rows at preset {preset} yet: wsss part-interventions --preset {preset}")

# %% [markdown]
# ## The probes, one image each, and every method's mask

# %%
first = next(iter(experiments.values()))
pictures, titles, labels = [], [], []
for probe in synthvoc.PROBES:
    ds = probes.probe_dataset(first, probe)
    for i in range(min(n_examples, len(ds))):
        sample = ds.load(i)
        pictures.append([sample["image"], viz.colorize(sample["mask"])]
                        + [viz.colorize(probes.probe_mask(exp, probe, sample)) for exp in experiments.values()])
        titles.append(["image", "ground truth", *experiments])
        labels.append(f"{probe} {i}")
fig = viz.image_grid(pictures, titles, labels, class_names=first.class_names)
viz.save_figure(fig, "08_probes_examples");
