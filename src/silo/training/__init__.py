"""Training: latent operators (``operator.py``) and the silo-tiny prior (``prior.py``)."""
