"""Tools beside the node: the demo, model evaluation and the phantom DICOM writer.

None of the node's roles imports them; they use the node and its writers.
"""
