"""Unpack mirrored scan archives into per-file gzip objects, safely and exactly once.

``python -m services.untar --raw RAW --target TARGET`` streams every archive under
``RAW`` that has no completion marker yet and writes its ``.json`` members to
``TARGET/scans/<scan_type>/<scan>/<file>.json.gz``, then ``_COMPLETE``.
"""
