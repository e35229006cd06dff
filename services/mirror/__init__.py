"""Mirror Censored Planet scan archives and resource files into our storage.

``python -m services.mirror archives``: copy new ``*.tar.gz`` archives from a source
(``gs://`` prefix, HTTPS index page or local folder) to our raw location, each exactly
once (same size and MD5 ⇒ skipped), streaming and atomically.
``python -m services.mirror resources``: conditional (ETag) download of the signature
and domain-category files into dated folders plus ``current/``.
"""
