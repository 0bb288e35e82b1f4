"""`outpaint bench --gpu-check`: one command that checks a GPU machine end to end (docs/gpu.md, "One GPU check").

budget.py splits the time limit between the parts; probe.py finds the GPU and the packages before any
work; worker.py runs one part in a process of its own (a crash or hang in one backend costs only its
part); compare.py and clock.py hold the image comparison and the event timing; pytest_run.py runs the
`gpu`-marked tests; run.py orders the parts; report.py writes the JSON and the summary.
"""
