"""The routeviews service: mirrors CAIDA prefix-to-AS, AS-organisation and AS-class files.

See README.md; the enrichment library that reads the mirror is ``services.common.ipmeta``.
"""
