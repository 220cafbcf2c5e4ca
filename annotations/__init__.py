"""Human review in FiftyOne: push a dataset folder, launch the App, pull verdicts back.

Python API (what other parts call)::

    from annotations.sync import sync_dataset          # dataset folder -> persistent FiftyOne dataset
    from annotations.verdicts import pull_verdicts     # FiftyOne tags/labels -> manifest.parquet
    from annotations.triplets import sync_triplets     # triplets.parquet -> grouped FiftyOne dataset
    from annotations.app import start_app, check_port_free, dataset_url
    from annotations.database import connect           # honours --database-uri, errors point at doctor

``fiftyone`` is imported only inside these functions (it takes seconds), never at import time.
"""
