"""What the notebooks show beyond the pipeline's own numbers: scores and views of trained runs
(e.g. contour quality, example maps, a method's labels over training), one module per topic or
method, computed from the library's stages and cached in the run folder like them. No training
logic lives here: nothing under `wsss.methods`, `wsss.stages` or the training loop imports it.
"""
