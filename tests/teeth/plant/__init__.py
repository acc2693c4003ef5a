"""Planting bugs in real node processes (see ``sitecustomize.py``)."""
