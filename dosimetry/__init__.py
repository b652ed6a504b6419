"""The dosimetric QA of a synthetic CT: HU and tissue checks, a photon dose engine, gamma, DVH and the verdict.

It imports ``models`` (for :class:`~models.volume.Volume`, the exception root and the atomic write) and
never ``sct_node``: the CLI and the node call it, and :func:`dosimetry.qa.run_qa` is its one pipeline.
"""
