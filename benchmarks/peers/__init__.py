"""The same network in other frameworks, timed beside ours by ``benchmarks/throughput.py --peers``.

Optional: ``pip install -e '.[peers]'`` (PyTorch 2.13, CPU wheel). Without it the peers are
skipped with a line that says so.
"""
