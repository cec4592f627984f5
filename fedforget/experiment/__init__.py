"""The one experiment protocol behind ``fedforget run``, ``compare`` and ``experiment``.

Layers, each importing only those above it:

* :mod:`~fedforget.experiment.validity`, :mod:`~fedforget.experiment.spec`:
  the retraining noise floor; the experiment file (``experiments/*.toml``);
* :mod:`~fedforget.experiment.records`: typed records of what a phase trained;
* :mod:`~fedforget.experiment.references`: the retrained references and their cache;
* :mod:`~fedforget.experiment.phases`: references, the original and a
  method's cell on a Flower grid;
* :mod:`~fedforget.experiment.evaluation`: each model evaluated once with the
  metric registry; the row schema;
* :mod:`~fedforget.experiment.centralised`: the centralised cells;
* :mod:`~fedforget.experiment.protocol`: references, original and cells of
  one (target set, seed);
* :mod:`~fedforget.experiment.results`, :mod:`~fedforget.experiment.tables`:
  the long format and the summary; the per-run files and the terminal table;
* :mod:`~fedforget.experiment.runner`, :mod:`~fedforget.experiment.commands`:
  ``fedforget experiment FILE --out DIR`` (resumable cell by cell);
  ``fedforget compare`` and ``fedforget run``;
* :mod:`~fedforget.experiment.report`: ``fedforget report DIR``.
"""
