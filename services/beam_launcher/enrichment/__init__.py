"""What rows are enriched with: IP metadata, blockpage signatures, domain categories.

* ``ip_metadata`` — dated CAIDA metadata (AS, netblock, country) per batch of rows
* ``signatures`` — blockpage / false-positive signatures and their one-pass matcher
* ``categories`` — domain categories by host
* ``resources`` — loading signatures and categories from a folder or ``gs://``
"""
