"""The pipeline's shared named steps (as IRNet's step/ modules): CAM seeds, random-walk
propagation, pseudo masks and the final segmentation stage. Each takes plain inputs (a run, a
split, settings) and caches its output in the run folder through `wsss.cache`; methods declare
which ones they use and never reach into the orchestrator."""
