"""ctloop's benchmarks: `make bench` (or `python -m bench [--tiny]`) measures, side by side on one
machine, serving on TorchServe vs FastAPI vs in-process, the consensus filter on TorchServe vs
in-process, the continuous-training cycle and its orchestration overhead, the learning quality
of pseudo-labels against an oracle for every drift kind, requests lost during a deploy, and how
many parts the input-drift trigger needs to notice each drift kind and how often it trips on a clean line.

Nothing here is imported by ctloop itself; the results land in `bench/results.json`.
"""
