# %% [markdown]
# # The dataset
#
# What the methods train on: samples with their masks and saliency, class and co-occurrence
# statistics, and each failure mode SynthVOC plants for a method to fix (see
# `wsss.data.synthvoc`): part-defined classes (VWL, RCM/MAM, shape cues), co-occurring
# context (EPS), intra-object edges (SANCE), clutter, and a biased saliency detector (EPS's
# map selection). Point `data_root` at `VOCdevkit/VOC2012` to see the same views of real VOC.

# %% tags=["parameters"]
preset = "quick"  # SynthVOC preset: tiny, quick or full
data_root = None  # a VOC-layout folder, None: SynthVOC of the preset
seed = 0
split = "train"
n_examples = 6

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from wsss import viz
from wsss.data import synthvoc
from wsss.data.stats import part_share, split_statistics
from wsss.data.voc import VOCDataset, read_mask
from wsss.evaluation import context_dir_of

root = Path(data_root) if data_root else synthvoc.generate(synthvoc.default_root(preset, seed), preset=preset, seed=seed)
meta = json.loads((root / "meta.json").read_text()) if (root / "meta.json").is_file() else {}
dataset = VOCDataset(root, split, with_saliency=(root / "SaliencyMaps").is_dir())
phenomena = meta.get("phenomena", {})
print(f"{root.name}: {len(dataset)} {split} images, classes: {', '.join(dataset.class_names)}")

# %% [markdown]
# ## Samples: image, ground truth, saliency, context
#
# Ground truth keeps VOC's conventions: 0 = background, 255 (white) = an ignore band along
# object outlines. Context regions (rail, water) are background in the ground truth.

# %%
ctx_dir = context_dir_of(dataset)
rows, titles = [], []
for index, c in viz.pick_examples(dataset, n_examples):
    s = dataset.load(index)
    names = ", ".join(dataset.class_names[k] for k in np.flatnonzero(s["label"]))
    row, title = [s["image"], viz.colorize(s["mask"])], [f"{s['id']}: {names}", "ground truth"]
    if "saliency" in s:
        row.append(viz.heat(s["saliency"], "gray")); title.append("saliency")
    if ctx_dir is not None:
        row.append(viz.colorize(read_mask(ctx_dir / f"{s['id']}.png"))); title.append("context regions")
    rows.append(row); titles.append(title)
viz.save_figure(viz.image_grid(rows, titles, class_names=dataset.class_names), "00_samples");

# %% [markdown]
# ## Classes and co-occurrence

# %%
stats = split_statistics(dataset, meta)
display(Markdown(viz.markdown_table(stats.class_table(), ["class", "images", "pixel_share"], percent=["pixel_share"])))

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
im = axes[0].imshow(stats.cooccurrence, cmap="viridis")
axes[0].set_xticks(range(len(dataset.class_names)), dataset.class_names, rotation=60)
axes[0].set_yticks(range(len(dataset.class_names)), dataset.class_names)
axes[0].set_title("images containing both classes")
fig.colorbar(im, ax=axes[0])
axes[1].bar(range(len(stats.classes_per_image)), stats.classes_per_image)
axes[1].set_xlabel("classes per image"); axes[1].set_ylabel("images")
viz.save_figure(fig, "00_cooccurrence");

# %% [markdown]
# ## The planted phenomena, measured on the data
#
# - **Context**: how often a class comes with its context region and the context with its
#   class. A classifier cannot tell them apart from image labels alone, so a CAM spreads onto the
#   context; the context false-positive rate measures that.
# - **Part-defined classes**: the share of the object that tells the twins apart. A CAM needs
#   only that part to classify, so its recall on these classes stays low.
# - **Intra-object edges**: the share of strong image edges lying inside objects, away from
#   any ground-truth boundary: what a contour detector trained on image evidence fires on.
# - **Saliency**: the simulated detector against the ground-truth foreground (it misses small
#   objects and fires on distractors); EPS's map selection has to cope with it.

# %%
summary = []
for cls, c in stats.context.items():
    summary.append({"phenomenon": f"context: {cls} + {c['context']}",
                    "value": f"P(context | {cls}) = {c['p_context_given_class']:.2f}, "
                             f"P({cls} | context) = {c['p_class_given_context']:.2f}"})
for cls in phenomena.get("part_defined", []):
    summary.append({"phenomenon": f"part-defined: {cls}", "value": f"part = {100 * part_share(cls):.1f}% of the object"})
summary.append({"phenomenon": "intra-object edges",
                "value": f"{100 * stats.edges['intra_object_share']:.1f}% of image edge pixels lie inside objects"})
if stats.saliency:
    summary.append({"phenomenon": "saliency vs ground-truth foreground",
                    "value": ", ".join(f"{k} {100 * v:.1f}%" for k, v in stats.saliency.items())})
display(Markdown(viz.markdown_table(summary, ["phenomenon", "value"])))

# %%
# NBVAL_CHECK_OUTPUT
print(f"{len(dataset)} images; objects per image (classes): {stats.classes_per_image.tolist()}")
for cls, c in stats.context.items():
    print(f"P(context|{cls}) {c['p_context_given_class']:.3f}")
if stats.saliency:
    print(f"saliency IoU {stats.saliency['iou']:.3f}")

# %% [markdown]
# ### Part-defined twins side by side
#
# The same body; only the small part differs.

# %%
if phenomena.get("part_defined"):
    rows, titles = [], []
    for cls in phenomena["part_defined"]:
        k = dataset.class_names.index(cls)
        picks = [i for i in range(len(dataset)) if dataset.label(i)[k] > 0][:4]
        rows.append([dataset.load(i)["image"] for i in picks])
        titles.append([cls] * len(picks))
    viz.save_figure(viz.image_grid(rows, titles), "00_part_defined");
