# %% [markdown]
# # CAM explorer
#
# Browse the class maps every run has saved (`runs/*/cams/<split>/`) without retraining: pick a
# run (method), an image and a class, move the background threshold, switch the dense CRF on, and
# watch the pseudo mask and the image's mIoU change. `order` lists the images worst first by their
# mIoU at the run's chosen threshold, `images with` keeps those of one class, `beside` shows a
# second run (at its own threshold) on the same image; the legend names the mask colours (white:
# the ignored band along object boundaries), the colour bar the class score. Runs appear here once a method notebook (or
# `Experiment.class_maps`) has written their class maps; with none yet, the CAM baseline of
# `preset` is made first. The threshold starts at each run's chosen one (its train sweep).

# %% tags=["parameters"]
preset = "quick"  # used only when no run has class maps yet: the CAM baseline of this preset
split = "val"
run = None  # a run folder name to start on, None: the first
image = None  # an image id to start on, None: the first
bg_threshold = None  # None: the runs best threshold

# %%
from IPython.display import Image, display

from wsss.explorer import CAMExplorer, runs_or_baseline

runs = runs_or_baseline(preset, split)
explorer = CAMExplorer(runs, split=split, bg_threshold=bg_threshold)
if run is not None:
    explorer.run.value = next(r for r in runs if r.name == run)
if image is not None:
    explorer.image.value = image
display(explorer.widget)

# %% [markdown]
# Without a live kernel (a rendered report), the widgets do not show; this is the view the
# controls above currently produce.

# %%
print(explorer.state())
display(Image(explorer.view.value))
