"""Past one process: the engines users already run, never a scheduler of niwt's own.

- :mod:`niwt.distributed.ddp`: data-parallel fine-tuning under ``torch.distributed.run`` (torchrun):
  the world a process belongs to, the rank's share of every global batch, gathering evaluation.
- :mod:`niwt.distributed.launch`: ``NIWT_NPROC`` / ``--nproc``: a stage relaunched as N processes
  under ``torch.distributed.run``, which stops them all when one fails.
- :mod:`niwt.distributed.dask`: independent jobs (extraction shards, validation settings,
  injection methods) on a Dask cluster (``NIWT_RUNNER=dask``).
"""
