"""The local warehouse report: a text summary and an HTML page of charts.

Run it with ``python -m services.beam_launcher.report``.
"""
