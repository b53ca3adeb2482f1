"""Beyond one process: a Triton model repository, a PyTriton server, Ray Data batch jobs.

Each module imports its heavy dependency (pytriton, ray) where used, so importing
``mgd_rt.serve`` costs nothing.
"""
