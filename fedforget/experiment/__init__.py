"""Experiments a paper needs: cells (method x target set x seed), results as data, reports.

* :mod:`~fedforget.experiment.spec`: the experiment file (``experiments/*.toml``);
* :mod:`~fedforget.experiment.runner`: ``fedforget experiment FILE --out DIR``,
  resumable cell by cell;
* :mod:`~fedforget.experiment.results`: long-format rows and the summary;
* :mod:`~fedforget.experiment.report`: ``fedforget report DIR``.
"""
