"""Judge: the elimination rules over an evolution's text, and the validity and equality checks of the judge model."""
