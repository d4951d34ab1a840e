"""A run, piece by piece: what the engine (:mod:`ferryman.engine`) composes.

The engine takes the pipeline's lease, opens its systems, records the run row, and hands
the run to one of these; the pure rules they apply (planning, the cursor policy, mapping)
live apart, in :mod:`ferryman.planning`, :mod:`ferryman.planning_twoway`,
:mod:`ferryman.cursor` and :mod:`ferryman.mapping`.

- :mod:`ferryman.run.oneway`: a one-way run's page loop, and a page planned and delivered
  to one target (:func:`~ferryman.run.oneway.deliver_page`).
- :mod:`ferryman.run.delivery`: one page's planned actions written to one target, with
  intents, fencing, bounded concurrency, a file sink's page in one call, dead letters and
  the record history.
- :mod:`ferryman.run.replay`: dead letters delivered again (``dlq replay``, a run's
  reference retries).
- :mod:`ferryman.run.sinks`: file targets restored, checkpointed and published: written
  once for one-way runs, two-way runs and replays.
- :mod:`ferryman.run.observer`: what watches a run (dry-run report, progress, stop).
- :mod:`ferryman.run.pages`: the next page read while this one is written.
"""
