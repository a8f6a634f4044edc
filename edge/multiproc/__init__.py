"""Several processes per node: the coordination seam, its worker implementation and the
supervisor.
"""
