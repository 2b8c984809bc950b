"""Planning: what a run would do before it runs (`evol plan`), its estimate, the checks of a config."""
