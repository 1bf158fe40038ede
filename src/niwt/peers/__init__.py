"""Peer zero-shot methods the NIWT results are compared against.

``eszsl``: ESZSL closed form (Romera-Paredes & Torr, ICML'15), a feature-level baseline.
``regression``: ridge regression from class descriptors to classifier rows (direct weight regression).
``icis``: ICIS (Christensen et al., ICCV'23), image-free classifier injection with two autoencoders.
``devise``, ``ale``, ``sje``, ``sae`` (sharing ``bilinear``): the classic compatibility models as Xian et al.
(TPAMI'18) benchmark them, opt-in methods of the registry.
"""
