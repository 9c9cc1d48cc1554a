"""The machinery around the method: the invented world (corpus), tokens and batches (data), what a
run unlearns (tasks), what it measures (evaluation, metrics), the loop's plumbing (runtime, ddp),
a run's files and printout (runfiles, report), Hugging Face checkpoints (hf), errors and safe writes
(userio). The method itself is one folder up: model.py, lora.py, fisher.py, unlearn.py."""
