"""Adapters to tools a practitioner already runs (MLflow). Each imports its product lazily, only
when it is turned on, so ``import flowbot`` never needs them."""
