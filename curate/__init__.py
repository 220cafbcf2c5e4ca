"""curate: dataset construction and curation for compositional vision-language research."""
__version__ = "0.1.0"
