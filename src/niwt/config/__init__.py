"""Reading the configuration: ``params.yaml`` into the schema of :mod:`niwt.params`, its value bounds,
the execution settings from ``NIWT_*`` variables, and the view of the params a stage declared.

This is wiring, used by the CLI before a stage runs: no stage imports it, so editing a message or a
bound here reruns nothing under DVC (the stages' lineage is the schema, not how it is read).
"""
