"""What every layer of ``tasks`` and ``flows`` shares: configuration, sampling settings, text normalisation.

Nothing here imports from the rest of ``tasks`` or from ``flows``: the rest imports from here."""
